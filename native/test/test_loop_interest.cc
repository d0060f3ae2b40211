// Loop: the registered interest is remembered, so epoll_ctl runs only when it changes; an
// interest of 0 keeps the fd in the set (hang-ups are still reported); forget() leaves the
// set; events reach the watcher's handler with its tag.
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/ps_loop.h"
#include "check.h"

namespace {

struct Recorder final : ps::EventHandler {
  int calls = 0;
  uint8_t last_tag = 255;
  uint32_t last_events = 0;
  void on_event(ps::Watcher* watcher, uint32_t events) override {
    calls++;
    last_tag = watcher->tag;
    last_events = events;
  }
};

}  // namespace

int main() {
  ps::Loop loop;
  CHECK_EQ(loop.init(), 0);
  int pair[2];
  CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  Recorder recorder;
  ps::Watcher w;
  w.fd = pair[0];
  w.tag = 7;
  w.handler = &recorder;

  // Nothing to read yet: no event. Then a byte: EPOLLIN, to the handler, with the tag.
  CHECK_EQ(loop.watch(&w, EPOLLIN), 0);
  CHECK(w.in_set);
  CHECK_EQ(loop.wait(0), 0);
  CHECK_EQ(write(pair[1], "x", 1), 1);
  int ready = loop.wait(1000);
  CHECK_EQ(ready, 1);
  loop.dispatch(ready);
  CHECK_EQ(recorder.calls, 1);
  CHECK_EQ(recorder.last_tag, 7);
  CHECK(recorder.last_events & EPOLLIN);

  // Interest 0: still in the set, readable data is not reported...
  CHECK_EQ(loop.watch(&w, 0), 0);
  CHECK(w.in_set);
  CHECK_EQ(loop.wait(0), 0);
  // ...but a hang-up is.
  close(pair[1]);
  ready = loop.wait(1000);
  CHECK_EQ(ready, 1);
  loop.dispatch(ready);
  CHECK(recorder.last_events & EPOLLHUP);

  // forget() leaves the set: the hang-up is no longer reported.
  loop.forget(&w);
  CHECK(!w.in_set);
  CHECK_EQ(loop.wait(0), 0);
  loop.forget(&w);  // Forgetting twice is harmless.

  // The interest is remembered: asking for the same one makes no system call. Observed
  // through a closed descriptor, for which epoll_ctl would fail with EBADF.
  CHECK_EQ(loop.watch(&w, EPOLLIN), 0);
  close(pair[0]);
  CHECK_EQ(loop.watch(&w, EPOLLIN), 0);
  CHECK_EQ(loop.watch(&w, EPOLLIN | EPOLLOUT), -EBADF);
  CHECK_EQ(w.interest, EPOLLIN);  // A failed change leaves the remembered interest as it was.

  // wait() turns a bad timeout's EINVAL into a negative errno, never a crash; 0 events
  // after a timeout.
  CHECK_EQ(loop.wait(1), 0);
  CHECK(ps::monotonic_ms() > 0);
  return 0;
}
