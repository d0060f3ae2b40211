#include "ps_error.h"

#include <string.h>

namespace ps {

const char* errno_name(int negative_errno) {
  const char* name = strerrorname_np(-negative_errno);
  return name != nullptr ? name : "UNKNOWN";
}

const char* errno_text(int negative_errno) {
  const char* text = strerrordesc_np(-negative_errno);
  return text != nullptr ? text : "Unknown error";
}

}  // namespace ps
