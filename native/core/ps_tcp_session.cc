#include "ps_tcp_session.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "ps_worker.h"

namespace ps {

namespace {

// Passes over one direction per event before giving other connections a turn; level
// triggered epoll reports the socket again if it still has data.
constexpr int kMaxRounds = 4;

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Makes the next close() send RST instead of FIN.
void set_linger_zero(int fd) {
  if (fd < 0) return;
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

// The pending error of a socket, as a negative errno, or 0.
int socket_error(int fd) {
  int error = 0;
  socklen_t length = sizeof error;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0) return -errno;
  return -error;
}

}  // namespace

TcpSession::TcpSession(Worker* worker, Mapping* mapping, UniqueFd client)
    : worker_(worker), mapping_(mapping), counters_(&mapping->counters(worker->index())), client_(std::move(client)) {
  client_watcher_.fd = client_.get();
  client_watcher_.tag = kClient;
  client_watcher_.handler = this;
  target_watcher_.tag = kTarget;
  target_watcher_.handler = this;
  counters_->accepted.add(1);
  counters_->active.add(1);
}

int TcpSession::start() {
  set_nodelay(client_.get());
  const SocketAddress& target = mapping_->config().target;
  int fd = socket(target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int error = -errno;
    fail_connect();
    return error;
  }
  target_.reset(fd);
  target_watcher_.fd = fd;
  set_nodelay(fd);
  int rc;
  do {
    rc = connect(fd, target.get(), target.length);
  } while (rc < 0 && errno == EINTR);
  if (rc == 0) {
    on_connected();
    return 0;
  }
  if (errno != EINPROGRESS) {
    int error = -errno;
    fail_connect();
    return error;
  }
  if (worker_->loop().watch(&target_watcher_, EPOLLOUT) < 0) {
    int error = -errno;
    fail_connect();
    return error;
  }
  connect_deadline_ = worker_->now_ms() + mapping_->config().connect_timeout_ms;
  worker_->track_connect(this);
  return 0;
}

void TcpSession::on_connect_timeout() {
  if (state_ == State::kConnecting) fail_connect();
}

void TcpSession::fail_connect() {
  counters_->failed.add(1);
  finish(true);
}

void TcpSession::on_connected() {
  state_ = State::kOpen;
  connecting_link.unlink();
  // Level triggered: the loop reports what is already waiting on either socket.
  if (worker_->loop().watch(&client_watcher_, EPOLLIN) < 0 || worker_->loop().watch(&target_watcher_, EPOLLIN) < 0) {
    finish(true);
  }
}

void TcpSession::on_event(Watcher* watcher, uint32_t events) {
  if (state_ == State::kClosed) return;
  activity++;
  if (state_ == State::kConnecting) {
    if (watcher->tag != kTarget) return;
    if (socket_error(target_.get()) != 0 || (events & EPOLLHUP)) {
      fail_connect();
    } else if (events & EPOLLOUT) {
      on_connected();
    }
    return;
  }
  if ((events & EPOLLERR) && socket_error(watcher->fd) != 0) {
    finish(true);
    return;
  }
  // After HUP or ERR a read returns 0 or the error, and a write fails: both end the
  // direction, so they count as readable and writable.
  bool in = (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0;
  bool out = (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
  bool from_client = watcher->tag == kClient;
  int rc = pump(up_, client_.get(), target_.get(), from_client && in, !from_client && out, true);
  if (rc == 0) rc = pump(down_, target_.get(), client_.get(), !from_client && in, from_client && out, false);
  if (rc < 0) {
    finish(true);
  } else if (up_.shut && down_.shut) {
    finish(false);
  } else {
    update_interest(watcher, events);
  }
}

int TcpSession::pump(Direction& d, int src, int dst, bool can_read, bool can_write, bool toward_target) {
  for (int round = 0; round < kMaxRounds; round++) {
    if (d.pending > 0) {
      if (!can_write) break;
      ssize_t n = write_out(d, dst, toward_target);
      if (n == -EAGAIN) break;
      if (n < 0) return static_cast<int>(n);
      d.pending -= static_cast<size_t>(n);
      if (d.pending > 0) break;  // A short write: the send buffer is full, wait for EPOLLOUT.
    }
    if (d.eof || !can_read) break;
    if (!d.has_store()) {
      int rc = acquire_store(d);
      if (rc < 0) return rc;
    }
    ssize_t n = read_in(d, src);
    if (n == -EAGAIN) break;
    if (n < 0) return static_cast<int>(n);
    if (n == 0) {
      d.eof = true;
      break;
    }
    d.pending = static_cast<size_t>(n);
    d.offset = 0;
    can_write = true;
    // A read that did not fill the store most likely drained the socket; if not, the
    // loop reports it again, which is cheaper than a read that returns EAGAIN.
    size_t capacity = d.pipe.valid() ? d.pipe.capacity : BufferPool::kBufferSize;
    if (d.pending < capacity) can_read = false;
  }
  if (d.pending == 0) release_store(d);
  if (d.eof && d.pending == 0 && !d.shut) {
    // Every byte read before the FIN has been written: forward the FIN.
    shutdown(dst, SHUT_WR);
    d.shut = true;
  }
  return 0;
}

int TcpSession::acquire_store(Direction& d) {
  if (!no_splice_ && worker_->pipes().acquire(&d.pipe) == 0) return 0;
  // No pipe to be had (fd or pipe limits): this burst is copied, nothing is lost.
  d.buffer = worker_->buffers().acquire();
  return d.buffer != nullptr ? 0 : -ENOMEM;
}

void TcpSession::release_store(Direction& d) {
  if (d.pipe.valid()) worker_->pipes().release(&d.pipe, d.pending == 0);
  if (d.buffer != nullptr) {
    worker_->buffers().release(d.buffer);
    d.buffer = nullptr;
  }
}

ssize_t TcpSession::read_in(Direction& d, int src) {
  ssize_t n;
  if (d.pipe.valid()) {
    do {
      n = splice(src, nullptr, d.pipe.write_end.get(), nullptr, d.pipe.capacity, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    if (n >= 0) return n;
    if (errno != EINVAL) return -errno;
    // This pair of descriptors cannot splice: copy for the rest of the connection.
    no_splice_ = true;
    release_store(d);
    int rc = acquire_store(d);
    if (rc < 0) return rc;
  }
  do {
    n = recv(src, d.buffer, BufferPool::kBufferSize, 0);
  } while (n < 0 && errno == EINTR);
  return n >= 0 ? n : -errno;
}

ssize_t TcpSession::write_out(Direction& d, int dst, bool toward_target) {
  ssize_t n;
  bool spliced = d.pipe.valid();
  if (spliced) {
    // splice(2) has no MSG_NOSIGNAL: engine threads block SIGPIPE, so a peer that reset
    // gives EPIPE here instead of killing the process.
    do {
      n = splice(d.pipe.read_end.get(), nullptr, dst, nullptr, d.pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (n < 0 && errno == EINTR);
  } else {
    do {
      n = send(dst, d.buffer + d.offset, d.pending, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n > 0) d.offset += static_cast<size_t>(n);
  }
  if (n < 0) return -errno;
  uint64_t bytes = static_cast<uint64_t>(n);
  (toward_target ? counters_->to_target : counters_->to_client).add(bytes);
  (spliced ? counters_->spliced : counters_->copied).add(bytes);
  return n;
}

void TcpSession::update_interest(Watcher* event_watcher, uint32_t events) {
  constexpr uint32_t kIn = EPOLLIN;
  constexpr uint32_t kOut = EPOLLOUT;
  uint32_t client = (up_.wants_read() ? kIn : 0) | (down_.pending > 0 ? kOut : 0);
  uint32_t target = (down_.wants_read() ? kIn : 0) | (up_.pending > 0 ? kOut : 0);
  Loop& loop = worker_->loop();
  // A socket that hung up is reported on every wait while it stays in the set; when
  // nothing more is wanted from it, leave the set until something is.
  bool hup = (events & EPOLLHUP) != 0;
  int rc = 0;
  if (hup && event_watcher == &client_watcher_ && client == 0) {
    loop.forget(&client_watcher_);
  } else {
    rc = loop.watch(&client_watcher_, client);
  }
  if (hup && event_watcher == &target_watcher_ && target == 0) {
    loop.forget(&target_watcher_);
  } else if (rc == 0) {
    rc = loop.watch(&target_watcher_, target);
  }
  if (rc < 0) finish(true);
}

void TcpSession::detach() {
  worker_->loop().forget(&client_watcher_);
  worker_->loop().forget(&target_watcher_);
  worker_->pipes().disown(static_cast<size_t>(up_.pipe.valid()) + static_cast<size_t>(down_.pipe.valid()));
}

void TcpSession::attach(Worker* worker) {
  worker_ = worker;
  // `active` was counted up on the old worker's line and is counted down on this one:
  // the snapshot's unsigned sum wraps, so the total stays exact.
  counters_ = &mapping_->counters(worker->index());
  worker->pipes().adopt(static_cast<size_t>(up_.pipe.valid()) + static_cast<size_t>(down_.pipe.valid()));
  // The interest the session wants now; a socket that had hung up reports it again once
  // and leaves the set then.
  update_interest(nullptr, 0);
}

void TcpSession::finish(bool reset) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  if (reset) {
    // Forward the reset: the peer must not mistake a truncated stream for a clean end.
    set_linger_zero(client_.get());
    set_linger_zero(target_.get());
  }
  release_store(up_);
  release_store(down_);
  // Leave the epoll set before closing. close() alone removes a socket from it only when
  // no other descriptor refers to the socket, and a child forked by the embedding program
  // holds a copy until it execs: the registration would outlive the session and report
  // events for freed memory. Events already returned for them in this batch find the
  // session closed and are ignored.
  Loop& loop = worker_->loop();
  loop.forget(&client_watcher_);
  loop.forget(&target_watcher_);
  client_.reset();
  target_.reset();
  counters_->active.sub(1);
  connecting_link.unlink();
  all_link.unlink();
  worker_->retire(this);
}

}  // namespace ps
