// RAII ownership of file descriptors, and the few fd helpers every module needs.
#ifndef PORTSPLICE_PS_FD_H_
#define PORTSPLICE_PS_FD_H_

#include <errno.h>
#include <unistd.h>

namespace ps {

// Closes a descriptor. EINTR is not retried: on Linux the descriptor is released
// even when close() reports EINTR, and a retry could close a descriptor that another
// thread has just been given.
inline void close_fd(int fd) {
  if (fd >= 0) {
    int saved = errno;
    ::close(fd);
    errno = saved;
  }
}

// Owns one file descriptor and closes it when it goes out of scope.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  void reset(int fd = -1) {
    close_fd(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_FD_H_
