#include "ps_loop.h"

#include <errno.h>
#include <time.h>

#include "ps_assert.h"

namespace ps {

int Loop::init() {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return -errno;
  epoll_fd_.reset(fd);
  return 0;
}

int Loop::watch(Watcher* watcher, uint32_t events) {
  PS_ASSERT(watcher->fd >= 0 && watcher->handler != nullptr);
  PS_ASSERT((events & EPOLLEXCLUSIVE) == 0);  // watch_exclusive() adds it; epoll refuses it on MOD.
  if (watcher->in_set && watcher->interest == events) return 0;
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = watcher;
  int op = watcher->in_set ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(epoll_fd_.get(), op, watcher->fd, &ev) < 0) return -errno;
  watcher->in_set = true;
  watcher->interest = events;
  return 0;
}

int Loop::watch_exclusive(Watcher* watcher, uint32_t events) {
  PS_ASSERT(watcher->fd >= 0 && watcher->handler != nullptr);
  if (watcher->in_set) return 0;
  epoll_event ev{};
  ev.events = events | EPOLLEXCLUSIVE;
  ev.data.ptr = watcher;
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, watcher->fd, &ev) < 0) return -errno;
  watcher->in_set = true;
  watcher->interest = events;
  return 0;
}

void Loop::forget(Watcher* watcher) {
  if (!watcher->in_set) return;
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, watcher->fd, nullptr);
  watcher->in_set = false;
  watcher->interest = 0;
}

int Loop::wait(int timeout_ms) {
  int n = epoll_wait(epoll_fd_.get(), events_, kMaxEvents, timeout_ms);
  if (n < 0) return errno == EINTR ? 0 : -errno;
  return n;
}

void Loop::dispatch(int count) {
  PS_ASSERT(count >= 0 && count <= kMaxEvents);
  for (int i = 0; i < count; i++) {
    auto* watcher = static_cast<Watcher*>(events_[i].data.ptr);
    watcher->handler->on_event(watcher, events_[i].events);
  }
}

int64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

}  // namespace ps
