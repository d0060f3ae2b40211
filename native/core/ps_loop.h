// A small level-triggered epoll loop in the style of redis' ae: a fixed event array,
// a watcher embedded in each owner (nothing is allocated per event), and the registered
// interest remembered so that epoll_ctl is called only when the interest changes.
#ifndef PORTSPLICE_PS_LOOP_H_
#define PORTSPLICE_PS_LOOP_H_

#include <stdint.h>
#include <sys/epoll.h>

#include "ps_fd.h"

namespace ps {

class EventHandler;

// One file descriptor as seen by the loop. It lives inside its handler, and epoll's
// user data points at it.
struct Watcher {
  int fd = -1;
  uint8_t tag = 0;        // Tells the handler which of its descriptors this is.
  bool in_set = false;    // Whether the fd is in the epoll set.
  uint32_t interest = 0;  // The events registered, when in_set.
  EventHandler* handler = nullptr;
};

// Something with descriptors in a loop. Handlers that can close while a batch of
// events is being dispatched (connections, flows) are freed after the batch, through
// this virtual destructor.
class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void on_event(Watcher* watcher, uint32_t events) = 0;
};

class Loop {
 public:
  static constexpr int kMaxEvents = 256;

  // Creates the epoll instance. Returns 0 or a negative errno.
  int init();

  // Sets the interest of a watcher, adding it to the set if needed. An interest of 0
  // keeps the fd in the set, so EPOLLERR and EPOLLHUP are still reported.
  // Returns 0 or a negative errno.
  int watch(Watcher* watcher, uint32_t events);

  // Adds a watcher with EPOLLEXCLUSIVE (for a listening socket shared by several loops).
  int watch_exclusive(Watcher* watcher, uint32_t events);

  // Removes a watcher from the set, if it is there.
  void forget(Watcher* watcher);

  // Waits up to `timeout_ms` (-1: forever) for events. Returns how many are ready
  // (0 after a timeout or EINTR), or a negative errno.
  int wait(int timeout_ms);

  // Hands the `count` events returned by wait() to their handlers.
  void dispatch(int count);

 private:
  UniqueFd epoll_fd_;
  epoll_event events_[kMaxEvents];
};

// Milliseconds of CLOCK_MONOTONIC.
int64_t monotonic_ms();

}  // namespace ps

#endif  // PORTSPLICE_PS_LOOP_H_
