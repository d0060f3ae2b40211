// The readiness protocol on fd 3: dockerd reads "0\n" once the proxy is listening, or
// "1\n" and an error text (no trailing newline) if it could not start.
#ifndef PORTSPLICE_CLI_STATUS_PIPE_H_
#define PORTSPLICE_CLI_STATUS_PIPE_H_

#include "../core/ps_fd.h"

namespace ps_cli {

class StatusPipe {
 public:
  // Takes ownership of `fd` if it is open. This must run before the process opens any
  // descriptor of its own: otherwise a closed fd 3 could be reused by, say, a socket,
  // and the status would be written to it.
  explicit StatusPipe(int fd);

  // Writes "0\n" and closes the pipe, so that the parent's read sees end of file.
  void report_ready();

  // Writes "1\n" and `text`, and closes the pipe.
  void report_error(const char* text);

 private:
  void write_and_close(const char* data, size_t length);

  ps::UniqueFd fd_;
};

}  // namespace ps_cli

#endif  // PORTSPLICE_CLI_STATUS_PIPE_H_
