#include "status_pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>

#include <string>

namespace ps_cli {

StatusPipe::StatusPipe(int fd) {
  if (fcntl(fd, F_GETFD) < 0) return;
  // Nothing this process starts should inherit the parent's pipe.
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  fd_.reset(fd);
}

void StatusPipe::report_ready() {
  write_and_close("0\n", 2);
}

void StatusPipe::report_error(const char* text) {
  std::string message = "1\n";
  message += text;
  write_and_close(message.data(), message.size());
}

void StatusPipe::write_and_close(const char* data, size_t length) {
  if (!fd_.valid()) return;
  while (length > 0) {
    ssize_t n = write(fd_.get(), data, length);
    if (n > 0) {
      data += n;
      length -= static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      // The parent may have handed over a non-blocking pipe: wait for it to drain, but
      // not past the 16 s after which dockerd gives up reading anyway.
      pollfd writable = {fd_.get(), POLLOUT, 0};
      if (poll(&writable, 1, 16000) == 0) break;
    } else if (n < 0 && errno != EINTR) {
      // EPIPE (SIGPIPE is ignored) or EBADF: nobody reads the status any more.
      break;
    }
  }
  fd_.reset();
}

}  // namespace ps_cli
