#include "ps_udp.h"

#include <errno.h>
#include <netinet/udp.h>
#include <string.h>

#include <new>

#include "ps_worker_context.h"

namespace ps {

namespace {

// Batches read per readiness event before other sockets get a turn.
constexpr int kMaxRounds = 4;

// The destination address of a received datagram, from its IP_PKTINFO/IPV6_PKTINFO.
LocalAddress local_address_of(msghdr* header) {
  LocalAddress local;
  for (cmsghdr* c = CMSG_FIRSTHDR(header); c != nullptr; c = CMSG_NXTHDR(header, c)) {
    // A message cut short (MSG_CTRUNC) carries less than its type's size: skip it.
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO && c->cmsg_len >= CMSG_LEN(sizeof local.v4)) {
      memcpy(&local.v4, CMSG_DATA(c), sizeof local.v4);
      local.level = IPPROTO_IP;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
               c->cmsg_len >= CMSG_LEN(sizeof local.v6) && local.level != IPPROTO_IP) {
      // On a dual-stack socket an IPv4 datagram carries both; IP_PKTINFO is the one the
      // IPv4 send path takes back.
      memcpy(&local.v6, CMSG_DATA(c), sizeof local.v6);
      local.level = IPPROTO_IPV6;
    }
  }
  return local;
}

// Writes the control message that makes a reply leave from `local`. Returns its length.
size_t write_source_control(const LocalAddress& local, char* buffer) {
  msghdr header{};
  header.msg_control = buffer;
  header.msg_controllen = UdpBatch::kControlSize;
  cmsghdr* c = CMSG_FIRSTHDR(&header);
  if (local.level == IPPROTO_IP) {
    in_pktinfo info{};
    info.ipi_spec_dst = local.v4.ipi_addr;  // The address the client sent to.
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof info);
    memcpy(CMSG_DATA(c), &info, sizeof info);
    return CMSG_SPACE(sizeof info);
  }
  if (local.level == IPPROTO_IPV6) {
    in6_pktinfo info{};
    info.ipi6_addr = local.v6.ipi6_addr;
    // The interface matters only to scope a link-local source address.
    if (IN6_IS_ADDR_LINKLOCAL(&info.ipi6_addr)) info.ipi6_ifindex = local.v6.ipi6_ifindex;
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof info);
    memcpy(CMSG_DATA(c), &info, sizeof info);
    return CMSG_SPACE(sizeof info);
  }
  return 0;
}

// Writes a UDP_SEGMENT control message (UDP GSO). Returns its length.
size_t write_segment_size(uint16_t size, char* buffer) {
  msghdr header{};
  header.msg_control = buffer;
  header.msg_controllen = CMSG_SPACE(sizeof size);
  cmsghdr* c = CMSG_FIRSTHDR(&header);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof size);
  memcpy(CMSG_DATA(c), &size, sizeof size);
  return CMSG_SPACE(sizeof size);
}

// Points a batch's receive headers at its buffers.
void prepare_receive(UdpBatch* batch, bool with_names) {
  for (int i = 0; i < UdpBatch::kMessages; i++) {
    batch->in_iov[i].iov_base = batch->data.get() + i * UdpBatch::kDatagramSize;
    batch->in_iov[i].iov_len = UdpBatch::kDatagramSize;
    msghdr& h = batch->in[i].msg_hdr;
    h.msg_name = with_names ? &batch->names[i] : nullptr;
    h.msg_namelen = with_names ? sizeof batch->names[i] : 0;
    h.msg_iov = &batch->in_iov[i];
    h.msg_iovlen = 1;
    h.msg_control = with_names ? batch->in_control[i] : nullptr;
    h.msg_controllen = with_names ? UdpBatch::kControlSize : 0;
    h.msg_flags = 0;
  }
}

}  // namespace

std::unique_ptr<UdpBatch> UdpBatch::create() {
  std::unique_ptr<UdpBatch> batch(new (std::nothrow) UdpBatch());
  if (!batch) return nullptr;
  batch->data.reset(new (std::nothrow) char[kMessages * kDatagramSize]);
  if (!batch->data) return nullptr;
  return batch;
}

UdpForwarder::UdpForwarder(WorkerContext* worker, std::shared_ptr<Mapping> mapping)
    : worker_(worker), mapping_(std::move(mapping)), counters_(&mapping_->counters(worker->index())) {
  listen_watcher_.fd = mapping_->listen_fd();
  listen_watcher_.handler = this;
}

UdpForwarder::~UdpForwarder() {
  stop();
}

int UdpForwarder::start() {
  return worker_->loop().watch(&listen_watcher_, EPOLLIN);
}

void UdpForwarder::stop() {
  worker_->loop().forget(&listen_watcher_);
  while (Flow* flow = lru_.front()) close_flow(flow, nullptr);
}

void UdpForwarder::on_event(Watcher*, uint32_t) {
  forward_requests();
}

UdpForwarder::FlowKey UdpForwarder::key_of(const sockaddr_storage& address) {
  FlowKey key;
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    key.low = v4.sin_addr.s_addr;
    key.port_and_family = (static_cast<uint32_t>(v4.sin_port) << 16) | AF_INET;
  } else {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    memcpy(&key.high, v6.sin6_addr.s6_addr, 8);
    memcpy(&key.low, v6.sin6_addr.s6_addr + 8, 8);
    key.port_and_family = (static_cast<uint32_t>(v6.sin6_port) << 16) | AF_INET6;
  }
  return key;
}

UdpForwarder::Flow* UdpForwarder::find_or_create(const sockaddr_storage& client, socklen_t length,
                                                 const LocalAddress& local) {
  FlowKey key = key_of(client);
  auto it = flows_.find(key);
  if (it != flows_.end()) {
    if (local.level != 0) it->second->local = local;
    return it->second;
  }
  const MappingConfig& config = mapping_->config();
  if (flows_.size() >= config.udp_max_flows && !lru_.empty()) close_flow(lru_.front(), &counters_->flows_evicted);

  const SocketAddress& target = config.target;
  UniqueFd fd(socket(target.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return nullptr;
  // Connected: the kernel drops datagrams from anywhere but target:port.
  if (connect(fd.get(), target.get(), target.length) < 0) return nullptr;
  auto* flow = new (std::nothrow) Flow(this);
  if (flow == nullptr) return nullptr;
  flow->key = key;
  flow->fd = std::move(fd);
  flow->watcher.fd = flow->fd.get();
  flow->watcher.handler = flow;
  memcpy(&flow->client.storage, &client, length);
  flow->client.length = length;
  flow->local = local;
  flow->last_active_ms = worker_->now_ms();
  if (worker_->loop().watch(&flow->watcher, EPOLLIN) < 0) {
    delete flow;
    return nullptr;
  }
  flows_.emplace(key, flow);
  lru_.push_back(&flow->lru);
  counters_->flows_created.add(1);
  counters_->flows_active.add(1);
  worker_->schedule_timer(flow->last_active_ms + config.udp_timeout_ms);
  return flow;
}

void UdpForwarder::close_flow(Flow* flow, Counter* reason) {
  flows_.erase(flow->key);
  flow->lru.unlink();
  // Out of the epoll set before closing, as a forked child may hold a copy of the socket
  // (see TcpSession::finish); a pending event of this batch finds the flow closed.
  worker_->loop().forget(&flow->watcher);
  flow->fd.reset();
  flow->closed = true;
  if (reason != nullptr) reason->add(1);
  counters_->flows_active.sub(1);
  worker_->retire(flow);
}

void UdpForwarder::touch(Flow* flow) {
  // The loop's clock, read once per wakeup. The list stays ordered by last activity, so
  // expire() and eviction only ever look at its front. A flow that moves later needs no
  // timer of its own: the one already set finds the front not yet due and sets the next.
  flow->last_active_ms = worker_->now_ms();
  flow->lru.unlink();
  lru_.push_back(&flow->lru);
}

int64_t UdpForwarder::expire(int64_t now_ms) {
  int64_t timeout = mapping_->config().udp_timeout_ms;
  while (Flow* oldest = lru_.front()) {
    if (oldest->last_active_ms + timeout > now_ms) return oldest->last_active_ms + timeout;
    close_flow(oldest, &counters_->flows_expired);
  }
  return INT64_MAX;
}

void UdpForwarder::forward_requests() {
  UdpBatch* batch = worker_->udp_batch();
  if (batch == nullptr) return;
  for (int round = 0; round < kMaxRounds; round++) {
    prepare_receive(batch, true);
    int n = recvmmsg(listen_watcher_.fd, batch->in, UdpBatch::kMessages, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN: drained.
    }
    int i = 0;
    while (i < n) {
      msghdr& header = batch->in[i].msg_hdr;
      if (header.msg_flags & MSG_TRUNC) {
        counters_->dropped_truncated.add(1);
        i++;
        continue;
      }
      Flow* flow = find_or_create(batch->names[i], header.msg_namelen, local_address_of(&header));
      if (flow == nullptr) {
        counters_->dropped_no_flow.add(1);
        i++;
        continue;
      }
      // Consecutive datagrams of one client go to its flow together.
      int count = 0;
      while (i < n && !(batch->in[i].msg_hdr.msg_flags & MSG_TRUNC) && key_of(batch->names[i]) == flow->key) {
        batch->out_iov[count].iov_base = batch->in_iov[i].iov_base;
        batch->out_iov[count].iov_len = batch->in[i].msg_len;
        count++;
        i++;
      }
      send_batch(flow->fd.get(), batch->out_iov, count, nullptr, nullptr);
      // A client's datagram keeps its flow alive too (Docker 28.0.2+, moby
      // TestUDPOneSided): a client that only sends keeps one source port at the target.
      // Once per run of the batch, in memory: no system call.
      touch(flow);
    }
    if (n < UdpBatch::kMessages) return;
  }
}

void UdpForwarder::forward_replies(Flow* flow) {
  UdpBatch* batch = worker_->udp_batch();
  if (batch == nullptr) return;
  for (int round = 0; round < kMaxRounds; round++) {
    prepare_receive(batch, false);
    int n = recvmmsg(flow->fd.get(), batch->in, UdpBatch::kMessages, MSG_DONTWAIT, nullptr);
    if (n < 0) {
      // ECONNREFUSED reports an ICMP port unreachable for an earlier datagram: the
      // target's port was closed for a moment. The flow lives on.
      if (errno == EINTR || errno == ECONNREFUSED) continue;
      return;
    }
    int count = 0;
    for (int i = 0; i < n; i++) {
      if (batch->in[i].msg_hdr.msg_flags & MSG_TRUNC) {
        counters_->dropped_truncated.add(1);
        continue;
      }
      batch->out_iov[count].iov_base = batch->in_iov[i].iov_base;
      batch->out_iov[count].iov_len = batch->in[i].msg_len;
      count++;
    }
    send_batch(listen_watcher_.fd, batch->out_iov, count, &flow->client, &flow->local);
    touch(flow);
    if (n < UdpBatch::kMessages) return;
  }
}

int UdpForwarder::gso_run(const iovec* datagrams, int count) const {
  if (!gso_ || count < 2) return 1;
  size_t segment = datagrams[0].iov_len;
  if (segment == 0 || segment > kMaxGsoSegment) return 1;
  size_t total = segment;
  int run = 1;
  while (run < count && run < kMaxGsoSegments) {
    size_t length = datagrams[run].iov_len;
    if (length == 0 || length > segment || total + length > kMaxGsoBytes) break;
    total += length;
    run++;
    if (length < segment) break;  // Only the last segment may be shorter.
  }
  return run;
}

void UdpForwarder::send_batch(int fd, iovec* datagrams, int count, const SocketAddress* to, const LocalAddress* from) {
  UdpBatch* batch = worker_->udp_batch();
  bool toward_target = to == nullptr;
  // One message a datagram, or with UDP GSO one message for a run of datagrams of the
  // same size: the kernel builds and routes one packet and cuts it up at the last moment.
  int segments[UdpBatch::kMessages];
  size_t source_control[UdpBatch::kMessages];  // Bytes of control data before UDP_SEGMENT.
  int messages = 0;
  for (int i = 0; i < count;) {
    int run = gso_run(datagrams + i, count - i);
    msghdr& h = batch->out[messages].msg_hdr;
    h = msghdr{};
    if (to != nullptr) {
      h.msg_name = const_cast<sockaddr_storage*>(&to->storage);
      h.msg_namelen = to->length;
    }
    h.msg_iov = datagrams + i;
    h.msg_iovlen = static_cast<size_t>(run);
    size_t control = 0;
    char* buffer = batch->out_control[messages];
    if (from != nullptr) control += write_source_control(*from, buffer);
    source_control[messages] = control;
    if (run > 1) control += write_segment_size(static_cast<uint16_t>(datagrams[i].iov_len), buffer + control);
    if (control > 0) {
      h.msg_control = buffer;
      h.msg_controllen = control;
    }
    segments[messages] = run;
    messages++;
    i += run;
  }

  bool retried = false;
  int done = 0;
  while (done < messages) {
    int sent = sendmmsg(fd, batch->out + done, messages - done, MSG_DONTWAIT);
    if (sent > 0) {
      uint64_t bytes = 0;
      uint64_t count_sent = 0;
      for (int k = done; k < done + sent; k++) {
        bytes += batch->out[k].msg_len;
        count_sent += static_cast<uint64_t>(segments[k]);
      }
      (toward_target ? counters_->datagrams_to_target : counters_->datagrams_to_client).add(count_sent);
      (toward_target ? counters_->to_target : counters_->to_client).add(bytes);
      counters_->copied.add(bytes);
      done += sent;
      continue;
    }
    int error = errno;
    if (error == EINTR) continue;
    if (error == ECONNREFUSED && !retried) {
      // The error belongs to an earlier datagram and is now cleared: send this one.
      retried = true;
      continue;
    }
    if (error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS) {
      for (int k = done; k < messages; k++) counters_->dropped_queue_full.add(static_cast<uint64_t>(segments[k]));
      return;
    }
    if (segments[done] > 1 && error != ECONNREFUSED) {
      // The path refused segmentation offload (EMSGSIZE or EINVAL: a path MTU below the
      // segment, as on tunnels and overlay networks): send this run one datagram at a
      // time, and stop using it here. Not through this batch's messages, which still hold
      // the ones after it.
      gso_ = false;
      send_singly(fd, batch->out[done].msg_hdr, source_control[done], toward_target);
    } else {
      for (int k = 0; k < segments[done]; k++) count_drop(error);
    }
    done++;
  }
}

void UdpForwarder::send_singly(int fd, const msghdr& message, size_t source_control, bool toward_target) {
  bool retried = false;
  for (size_t i = 0; i < message.msg_iovlen;) {
    msghdr h = message;
    h.msg_iov = message.msg_iov + i;
    h.msg_iovlen = 1;
    h.msg_control = source_control > 0 ? message.msg_control : nullptr;
    h.msg_controllen = source_control;
    ssize_t n = sendmsg(fd, &h, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || (errno == ECONNREFUSED && !retried))) {
      retried = retried || errno == ECONNREFUSED;  // See send_batch.
      continue;
    }
    if (n >= 0) {
      (toward_target ? counters_->datagrams_to_target : counters_->datagrams_to_client).add(1);
      (toward_target ? counters_->to_target : counters_->to_client).add(static_cast<uint64_t>(n));
      counters_->copied.add(static_cast<uint64_t>(n));
    } else {
      count_drop(errno);
    }
    i++;
  }
}

void UdpForwarder::count_drop(int error) {
  if (error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS) {
    counters_->dropped_queue_full.add(1);
  } else if (error == ECONNREFUSED) {
    counters_->dropped_refused.add(1);
  } else {
    counters_->dropped_other.add(1);
  }
}

}  // namespace ps
