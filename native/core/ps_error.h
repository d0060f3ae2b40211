// The core's one error convention: functions return 0 (or a count) on success and a
// negative errno on failure. ps::Error adds the name of the failing system call, so
// that a binding can build a message such as "bind EADDRINUSE".
#ifndef PORTSPLICE_PS_ERROR_H_
#define PORTSPLICE_PS_ERROR_H_

namespace ps {

struct Error {
  int code = 0;              // A negative errno, or 0 for success.
  const char* syscall = "";  // The call that failed, for messages.
};

// The symbolic name of a negative errno ("EADDRINUSE"), or "UNKNOWN".
const char* errno_name(int negative_errno);

// The human-readable text of a negative errno ("Address already in use").
const char* errno_text(int negative_errno);

}  // namespace ps

#endif  // PORTSPLICE_PS_ERROR_H_
