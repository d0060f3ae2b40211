#include "ps_tcp_session.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <new>
#include <utility>
#include <vector>

#include "ps_events.h"
#include "ps_worker_context.h"

namespace ps {

namespace {

// Passes over one direction per event before giving other connections a turn; level
// triggered epoll reports the socket again if it still has data.
constexpr int kMaxRounds = 4;

// How long a client of an acceptProxyProtocol mapping has to send its whole PROXY header:
// the spec's "at least 3 seconds to cover a TCP retransmit" (section 2).
constexpr int64_t kProxyHeaderTimeoutMs = 3000;

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

// Choosing the source port toward the target. When the client closes first, the socket to
// the target is the active closer and its ports sit in TIME_WAIT for 60 s. Left to the
// kernel, connect() searches the ephemeral range in __inet_hash_connect() and reuses a
// TIME_WAIT port only where net.ipv4.tcp_tw_reuse allows it (the default, 2, allows it on
// loopback only): past ~28,000 connections per minute to one target:port every connect()
// scans thousands of ports (moby#47537: 100% CPU, then EADDRNOTAVAIL). With SO_REUSEADDR
// and an explicit bind() the port is ours, and connect() only checks that the 4-tuple is
// unique (__inet_check_established() with no twp), where tcp_twsk_unique() takes over a
// TIME_WAIT entry that has TCP timestamps whatever tcp_tw_reuse says: the kernel's own
// rule for reusing it safely (PAWS), without a port search.
//
// What this must not break, and how it does not: a port with a listener, or bound by a
// socket without SO_REUSEADDR, fails bind() (inet_csk_bind_conflict): the next port. A
// port this or another process already uses toward the same target:port (an established
// or a timestamp-less TIME_WAIT 4-tuple) fails connect() with EADDRNOTAVAIL: a new socket
// and the next port. After a bounded number of tries the kernel chooses, and if it finds
// nothing the connection fails like any other (the client is reset, `failed` counts it).
//
// Only odd ports are ever bound. A port bound explicitly has a bind bucket that connect()'s
// own search skips outright (fastreuse >= 0 in __inet_hash_connect), for every destination,
// while the socket or its TIME_WAIT lives: binding across the whole range under churn left
// every other program in the namespace (a proxy to another target, the host's own outgoing
// connections) with no port at all for 60 s. Since Linux 4.2 connect() scans even ports
// first and bind(0) prefers odd ones (commit 07f4c90062f8), so the even half stays the
// kernel's; half the range is plenty here, since a port is reused at once for the next
// connection to the same target whatever its TIME_WAIT (see above).
constexpr int kMaxBindTries = 16;
constexpr int kMaxConnectTries = 4;

// The ports connect() itself would use: net.ipv4.ip_local_port_range minus
// net.ipv4.ip_local_reserved_ports (both also govern IPv6), read once per process.
class SourcePorts {
 public:
  static const SourcePorts& get() {
    static const SourcePorts ports;  // Initialised once, thread-safely.
    return ports;
  }

  // The usable odd port after *cursor, which moves on to it; never `avoid` (the target's
  // own port: on loopback, a socket bound to it would connect to itself).
  uint16_t next(uint32_t* cursor, uint16_t avoid) const {
    uint32_t first = low_ | 1;  // The first odd port of the range.
    if (first > high_) return 0;
    uint32_t span = (high_ - first) / 2 + 1;  // Odd ports in the range.
    for (uint32_t i = 0; i < span; i++) {
      *cursor = (*cursor + 1) % span;
      uint32_t port = first + 2 * *cursor;
      if (port != avoid && !reserved(port)) return static_cast<uint16_t>(port);
    }
    return 0;  // Every odd port is reserved: let the kernel choose.
  }

 private:
  SourcePorts() {
    char text[64];
    unsigned low = 0, high = 0;
    if (read_text("/proc/sys/net/ipv4/ip_local_port_range", text, sizeof text) &&
        sscanf(text, "%u %u", &low, &high) == 2 && low >= 1 && low <= high && high <= 65535) {
      low_ = low;
      high_ = high;
    }
    // "1000,8080-8090": one range or port per comma.
    char list[4096];
    if (!read_text("/proc/sys/net/ipv4/ip_local_reserved_ports", list, sizeof list)) return;
    for (char* at = list; *at != '\0';) {
      unsigned first = 0, last = 0;
      int used = 0;
      if (sscanf(at, "%u-%u%n", &first, &last, &used) == 2 || sscanf(at, "%u%n", &first, &used) == 1) {
        if (last < first) last = first;
        reserved_.emplace_back(first, last);
      }
      at += used;
      while (*at != '\0' && *at != ',') at++;
      if (*at == ',') at++;
    }
  }

  static bool read_text(const char* path, char* out, size_t size) {
    int fd;
    do {
      fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return false;
    UniqueFd owned(fd);
    ssize_t n;
    do {
      n = read(fd, out, size - 1);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    out[n] = '\0';
    return true;
  }

  bool reserved(uint32_t port) const {
    for (const auto& range : reserved_) {
      if (port >= range.first && port <= range.second) return true;
    }
    return false;
  }

  uint32_t low_ = 32768;  // The kernel's defaults, if /proc cannot be read.
  uint32_t high_ = 60999;
  std::vector<std::pair<uint32_t, uint32_t>> reserved_;
};

// Each engine thread walks the range from its own random start, so threads (and processes)
// rarely try the same port; no lock is taken.
thread_local uint32_t t_port_cursor = 0;
thread_local bool t_port_cursor_set = false;

uint32_t* port_cursor() {
  if (!t_port_cursor_set) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t seed = static_cast<uint64_t>(now.tv_nsec) ^ (static_cast<uint64_t>(gettid()) << 20);
    t_port_cursor = static_cast<uint32_t>((seed * 0x9E3779B97F4A7C15ull) >> 40);
    t_port_cursor_set = true;
  }
  return &t_port_cursor;
}

// Binds `fd` (which has SO_REUSEADDR) to the wildcard address of its family and a port
// from the cursor. Returns 0, or -EADDRINUSE once `*tries` reaches kMaxBindTries.
int bind_source_port(int fd, const SocketAddress& target, int* tries) {
  const SourcePorts& ports = SourcePorts::get();
  SocketAddress source;
  source.storage.ss_family = static_cast<sa_family_t>(target.family());
  source.length = target.length;
  while (*tries < kMaxBindTries) {
    ++*tries;
    uint16_t port = ports.next(port_cursor(), target.port());
    if (port == 0) break;
    if (source.family() == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&source.storage)->sin_port = htons(port);
    } else {
      reinterpret_cast<sockaddr_in6*>(&source.storage)->sin6_port = htons(port);
    }
    if (bind(fd, source.get(), source.length) == 0) return 0;
    if (errno != EADDRINUSE) return -errno;  // The caller lets the kernel choose.
  }
  return -EADDRINUSE;
}

// Opens a socket to the target and starts connecting, from a source port chosen as above.
// Returns 0 when connected at once, 1 when the connect is in progress, or a negative errno.
int connect_target(const MappingConfig& config, UniqueFd* out) {
  const SocketAddress& target = config.target;
  int binds = 0;
  for (int attempt = 0; attempt < kMaxConnectTries; attempt++) {
    UniqueFd fd(socket(target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return -errno;
    int rc = set_tcp_options(fd.get(), config);
    if (rc < 0) return rc;
    // The last try, and any try after bind() gave up, leave the port to the kernel.
    bool chosen = attempt + 1 < kMaxConnectTries;
    if (chosen) {
      int one = 1;
      chosen = setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
               bind_source_port(fd.get(), target, &binds) == 0;
    }
    do {
      rc = connect(fd.get(), target.get(), target.length);
    } while (rc < 0 && errno == EINTR);
    if (rc == 0 || errno == EINPROGRESS) {
      *out = std::move(fd);
      return rc == 0 ? 0 : 1;
    }
    // That 4-tuple is taken (an open connection, or a TIME_WAIT without timestamps).
    if (errno == EADDRNOTAVAIL && chosen) continue;
    return -errno;
  }
  return -EADDRNOTAVAIL;
}

}  // namespace

int set_tcp_options(int fd, const MappingConfig& config) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) return -errno;
  const KeepAlive& k = config.keep_alive;
  if (!k.enabled) return 0;
  if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &k.idle_s, sizeof k.idle_s) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &k.interval_s, sizeof k.interval_s) < 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &k.count, sizeof k.count) < 0) {
    return -errno;
  }
  return 0;
}

inline void TcpSession::touch() {
  if (idle_ == nullptr || last_active_ms_ == worker_->now_ms()) return;
  last_active_ms_ = worker_->now_ms();
  // The list stays ordered by last activity, so the timer only ever looks at its front.
  idle_link.unlink();
  idle_->push_back(&idle_link);
}

TcpSession::TcpSession(WorkerContext* worker, Mapping* mapping, UniqueFd client, List<TcpSession>* idle)
    : worker_(worker),
      mapping_(mapping),
      counters_(&mapping->counters(worker->index())),
      client_(std::move(client)),
      idle_(idle) {
  client_watcher_.fd = client_.get();
  client_watcher_.tag = kClient;
  client_watcher_.handler = this;
  target_watcher_.tag = kTarget;
  target_watcher_.handler = this;
  counters_->accepted.add(1);
  counters_->active.add(1);
}

int TcpSession::start() {
  if (!mapping_->config().accept_proxy_protocol) return connect();
  // The client's PROXY header comes first; connect once it has been read, within the
  // header timeout (the connect timers' list: no timer of its own).
  received_.reset(new (std::nothrow) Received);
  if (received_ == nullptr) {
    finish(true);
    return -ENOMEM;
  }
  state_ = State::kAwaitHeader;
  connect_deadline_ = worker_->now_ms() + kProxyHeaderTimeoutMs;
  worker_->track_connect(this);
  // A client sends its header right after its handshake, so it is most often queued by the
  // time accept() returns: read it now, and wait in the loop only for the rest.
  read_client_header();
  if (state_ == State::kAwaitHeader && worker_->loop().watch(&client_watcher_, EPOLLIN) < 0) {
    int error = -errno;
    finish(true);
    return error;
  }
  return 0;
}

// Reads what the client has sent of its header, without ever reading past it: the bytes
// are peeked, and only the header's own are taken off the socket, so that the client's
// data after it stays there for the first splice. Peeked bytes of a header still incomplete
// are all header, and are taken too, so that level-triggered EPOLLIN does not report them
// again and again.
void TcpSession::read_client_header() {
  Received& r = *received_;
  ssize_t n;
  do {
    n = recv(client_.get(), r.data + r.have, sizeof r.data - r.have, MSG_PEEK);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno != EAGAIN) finish(true);
    return;
  }
  if (n == 0) {  // FIN before a complete header.
    counters_->proxy_headers_rejected.add(1);
    finish(true);
    return;
  }
  size_t available = r.have + static_cast<size_t>(n);
  int length = parse_proxy_header(r.data, available, &r.header);
  if (length < 0 || (length == 0 && available == sizeof r.data)) {
    counters_->proxy_headers_rejected.add(1);
    finish(true);  // RST: "abort the connection as soon as possible" (spec 2.1).
    return;
  }
  size_t take = length == 0 ? static_cast<size_t>(n) : static_cast<size_t>(length) - r.have;
  do {
    n = recv(client_.get(), r.data + r.have, take, 0);  // Peeked: `take` bytes are there.
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(take)) {
    finish(true);
    return;
  }
  r.have += take;
  if (length == 0) return;
  counters_->proxy_headers_received.add(1);
  // Out of the set until the target is connected, as without acceptProxyProtocol: the
  // data after the header waits in the socket, and level-triggered EPOLLIN would report it
  // on every wait meanwhile.
  worker_->loop().forget(&client_watcher_);
  connecting_link.unlink();
  state_ = State::kConnecting;
  connect();
}

int TcpSession::connect() {
  // The client socket has TCP_NODELAY and keep-alive from the listener (set_tcp_options).
  int rc = connect_target(mapping_->config(), &target_);
  if (rc < 0) {
    // An `unreachable` route fails connect() at once with EHOSTUNREACH, no route with
    // ENETUNREACH; EMFILE and the like are returned too, for the caller to pause on.
    fail_connect(rc);
    return rc;
  }
  target_watcher_.fd = target_.get();
  if (rc == 0) {
    on_connected();
    return 0;
  }
  if (worker_->loop().watch(&target_watcher_, EPOLLOUT) < 0) {
    int error = -errno;
    fail_connect(error);
    return error;
  }
  connect_deadline_ = worker_->now_ms() + mapping_->config().connect_timeout_ms;
  worker_->track_connect(this);
  return 0;
}

void TcpSession::on_connect_timeout() {
  // A PROXY header still unsent by then counts as a connect that did not complete.
  if (state_ == State::kConnecting || state_ == State::kSendingHeader) {
    fail_connect(-ETIMEDOUT);
  } else if (state_ == State::kAwaitHeader) {
    counters_->proxy_headers_rejected.add(1);  // No complete header in time.
    finish(true);
  }
}

void TcpSession::on_idle_timeout() {
  idle_link.unlink();
  if (state_ != State::kOpen) return;
  counters_->idle_closed.add(1);
  // RST, not FIN: the proxy is cutting the stream, and a FIN would tell each peer that the
  // other ended it cleanly (the rule for resets above); a reset also frees both sockets at
  // once instead of waiting in FIN_WAIT for a peer that is, by definition, not answering.
  finish(true);
}

void TcpSession::fail_connect(int error) {
  FailReason reason = fail_reason(error);
  switch (reason) {
    case FailReason::kRefused:
      counters_->failed_refused.add(1);
      break;
    case FailReason::kTimeout:
      counters_->failed_timeout.add(1);
      break;
    case FailReason::kUnreachable:
      counters_->failed_unreachable.add(1);
      break;
    case FailReason::kOther:
      counters_->failed_other.add(1);
      break;
  }
  EventQueue* events = worker_->events();
  if (events != nullptr && events->enabled()) {
    Event event;
    event.kind = EventKind::kTargetFailure;
    event.reason = reason;
    event.mapping = mapping_->id();
    event.error = error;
    // Read only here, on the failure path: accept4() does not ask for the address.
    event.client.length = sizeof event.client.storage;
    if (getpeername(client_.get(), event.client.get(), &event.client.length) < 0) event.client.length = 0;
    if (!events->push(event)) counters_->events_dropped.add(1);
  }
  finish(true);
}

void TcpSession::on_connected() {
  if (mapping_->config().proxy_protocol != ProxyProtocol::kOff && !send_proxy_header()) return;
  start_forwarding();
}

// Sends the PROXY header on the fresh socket, before the first splice. Returns true when it
// is all sent; false when the session has closed or waits in kSendingHeader for EPOLLOUT.
bool TcpSession::send_proxy_header() {
  sockaddr_storage peer{}, local{};
  socklen_t peer_length = sizeof peer, local_length = sizeof local;
  if (received_ != nullptr && received_->header.has_addresses) {
    // Chaining: the addresses the client's own header announced.
    peer = received_->header.source;
    local = received_->header.destination;
  } else if (getpeername(client_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_length) < 0 ||
             getsockname(client_.get(), reinterpret_cast<sockaddr*>(&local), &local_length) < 0) {
    // The client's own address and the one it reached (never the listener's wildcard). A
    // client that reset while the target was being connected fails with ENOTCONN: nothing
    // to announce, reset the target too.
    finish(true);
    return false;
  }
  received_.reset();
  char header[kProxyHeaderMax];
  size_t length = build_proxy_header(mapping_->config().proxy_protocol, peer, local, header);
  // One send() of the whole header, in a segment of its own (TCP_NODELAY, and no client
  // byte has been read yet), as the spec asks: "the sender must ensure that all the
  // protocol header is sent at once". An empty send buffer always takes ~100 bytes; a
  // short write is handled anyway, by keeping the rest and finishing it before any splice.
  ssize_t n;
  do {
    n = send(target_.get(), header, length, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) {
    finish(true);
    return false;
  }
  size_t sent = n < 0 ? 0 : static_cast<size_t>(n);
  if (sent == length) {
    counters_->proxy_headers_sent.add(1);
    return true;
  }
  header_.reset(new (std::nothrow) char[length - sent]);
  if (header_ == nullptr) {
    finish(true);
    return false;
  }
  memcpy(header_.get(), header + sent, length - sent);
  header_offset_ = 0;
  header_length_ = static_cast<uint8_t>(length - sent);
  state_ = State::kSendingHeader;
  if (worker_->loop().watch(&target_watcher_, EPOLLOUT) < 0) {
    finish(true);
    return false;
  }
  // Bounded by the connect timeout: still (or now, after a connect that completed at
  // once) in the worker's list of pending connects.
  if (!connecting_link.linked()) {
    connect_deadline_ = worker_->now_ms() + mapping_->config().connect_timeout_ms;
    worker_->track_connect(this);
  }
  return false;
}

// In kSendingHeader, on EPOLLOUT: sends more of the header. True once it is all sent.
bool TcpSession::flush_proxy_header() {
  ssize_t n;
  do {
    n = send(target_.get(), header_.get() + header_offset_, header_length_ - header_offset_, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno != EAGAIN) finish(true);
    return false;
  }
  header_offset_ = static_cast<uint8_t>(header_offset_ + n);
  if (header_offset_ < header_length_) return false;
  header_.reset();
  counters_->proxy_headers_sent.add(1);
  return true;
}

void TcpSession::start_forwarding() {
  state_ = State::kOpen;
  received_.reset();
  connecting_link.unlink();
  if (idle_ != nullptr) {
    // The idle clock starts when the target answers; connecting has its own timeout.
    last_active_ms_ = worker_->now_ms();
    idle_->push_back(&idle_link);
    worker_->schedule_timer(idle_deadline());
  }
  // Level triggered: the loop reports what is already waiting on either socket.
  if (worker_->loop().watch(&client_watcher_, EPOLLIN) < 0 || worker_->loop().watch(&target_watcher_, EPOLLIN) < 0) {
    finish(true);
    return;
  }
  // The client most likely sent its first bytes while the target was being connected (it
  // sends once its own handshake is done, before the accept): forward them now instead of
  // after another epoll_wait. If nothing is there, one splice returns EAGAIN.
  on_event(&client_watcher_, EPOLLIN);
}

void TcpSession::on_event(Watcher* watcher, uint32_t events) {
  if (state_ == State::kClosed) return;
  activity++;
  if (state_ == State::kAwaitHeader) {
    if (watcher->tag == kClient) read_client_header();
    return;
  }
  if (state_ == State::kConnecting) {
    if (watcher->tag != kTarget) return;
    // A failed connect() is reported with EPOLLERR (sk_err is set) and EPOLLHUP, a completed
    // one with EPOLLOUT alone. SO_ERROR, read only on failure, says why: ECONNREFUSED for a
    // RST, EHOSTUNREACH for an ICMP or a failed ARP, ETIMEDOUT after the kernel's SYN retries.
    if (events & (EPOLLERR | EPOLLHUP)) {
      int error = socket_error(watcher->fd);
      fail_connect(error < 0 ? error : -ECONNRESET);
    } else if (events & EPOLLOUT) {
      on_connected();
    }
    return;
  }
  if (state_ == State::kSendingHeader) {
    if (watcher->tag != kTarget) return;
    if (events & (EPOLLERR | EPOLLHUP)) {
      finish(true);
    } else if ((events & EPOLLOUT) && flush_proxy_header()) {
      start_forwarding();
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
      if (n > 0) touch();
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
    touch();
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
  if (!no_splice_) {
    if (worker_->pipes().acquire(&d.pipe) == 0) {
      counters_->pipes.add(1);
      return 0;
    }
    // No pipe to be had (maxPipes, or EMFILE/ENFILE): this burst is copied, nothing is lost.
    counters_->pipe_fallbacks.add(1);
  }
  d.buffer = worker_->buffers().acquire();
  return d.buffer != nullptr ? 0 : -ENOMEM;
}

void TcpSession::release_store(Direction& d) {
  if (d.pipe.valid()) {
    // Counted down on this thread's line, maybe up on another's before a move: the
    // snapshot's unsigned sum wraps back to the exact total, as for `active`.
    counters_->pipes.sub(1);
    worker_->pipes().release(&d.pipe, d.pending == 0);
  }
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
  idle_link.unlink();
  worker_->pipes().disown(static_cast<size_t>(up_.pipe.valid()) + static_cast<size_t>(down_.pipe.valid()));
}

void TcpSession::attach(WorkerContext* worker, List<TcpSession>* idle) {
  worker_ = worker;
  // The new worker's list is ordered by its clock: the move counts as activity (only
  // sessions that were busy are moved).
  idle_ = idle;
  if (idle_ != nullptr && state_ == State::kOpen) {
    last_active_ms_ = worker->now_ms();
    idle_->push_back(&idle_link);
    worker->schedule_timer(idle_deadline());
  }
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
  idle_link.unlink();
  all_link.unlink();
  if (mapping_->config().max_connections > 0 && mapping_->give_slot()) worker_->resume_listener(mapping_);
  worker_->retire(this);
}

}  // namespace ps
