// PipePool: pipes are non-blocking and close-on-exec at both ends, an empty pipe is reused,
// one that still holds bytes is closed, `max_in_use` refuses with -ENOSPC, and no more than
// `max_idle` empty pipes are kept.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "../core/ps_store.h"
#include "check.h"

namespace {

bool is_open(int fd) {
  return fcntl(fd, F_GETFD) >= 0;
}

void check_flags(int fd) {
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
}

}  // namespace

int main() {
  ps::PipePool pool(0, 3, 1);
  ps::Pipe a, b, c, d;
  CHECK_EQ(pool.acquire(&a), 0);
  CHECK(a.valid());
  CHECK(a.capacity >= 4096);
  check_flags(a.read_end.get());
  check_flags(a.write_end.get());
  CHECK_EQ(pool.in_use(), 1);

  // An empty pipe goes back to the pool and is handed out again, the same descriptors.
  int a_read = a.read_end.get(), a_write = a.write_end.get();
  pool.release(&a, true);
  CHECK(!a.valid());
  CHECK_EQ(pool.in_use(), 0);
  CHECK(is_open(a_read));
  CHECK_EQ(pool.acquire(&a), 0);
  CHECK_EQ(a.read_end.get(), a_read);
  CHECK_EQ(a.write_end.get(), a_write);

  // At max_in_use the pool refuses, so that the caller copies instead.
  CHECK_EQ(pool.acquire(&b), 0);
  CHECK_EQ(pool.acquire(&c), 0);
  CHECK_EQ(pool.acquire(&d), -ENOSPC);
  CHECK(!d.valid());
  CHECK_EQ(pool.in_use(), 3);

  // A pipe that still holds bytes must never be reused: it is closed.
  CHECK_EQ(write(b.write_end.get(), "x", 1), 1);
  int b_read = b.read_end.get();
  pool.release(&b, false);
  CHECK(!is_open(b_read));

  // Only max_idle (1) empty pipes are kept; the rest are closed.
  int c_read = c.read_end.get();
  pool.release(&a, true);
  pool.release(&c, true);
  CHECK(is_open(a_read));
  CHECK(!is_open(c_read));
  CHECK_EQ(pool.in_use(), 0);

  // A released (invalid) pipe is ignored, and clear() closes the idle ones.
  pool.release(&c, true);
  CHECK_EQ(pool.in_use(), 0);
  pool.clear();
  CHECK(!is_open(a_read));

  // An explicit size is asked for with F_SETPIPE_SZ (64 KiB is within every limit).
  ps::PipePool sized(64 * 1024, 0, 4);
  ps::Pipe e;
  CHECK_EQ(sized.acquire(&e), 0);
  CHECK_EQ(e.capacity, 64 * 1024);
  CHECK_EQ(fcntl(e.write_end.get(), F_GETPIPE_SZ), 64 * 1024);
  sized.release(&e, true);
  return 0;
}
