#include "ps_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace ps {

namespace {

constexpr int kUdpListenBufferSize = 4 << 20;

}  // namespace

Engine::~Engine() {
  if (running()) stop(0);
  join();
}

int Engine::start(const EngineOptions& options, CompletionFn on_complete) {
  if (!workers_.empty()) return -EALREADY;
  if (options.threads < 1) return -EINVAL;
  options_ = options;
  on_complete_ = std::move(on_complete);
  for (int i = 0; i < options.threads; i++) {
    auto worker = std::make_unique<Worker>(i, options_, &on_complete_);
    int rc = worker->init();
    if (rc == 0) rc = worker->spawn();
    if (rc < 0) {
      // Undo: the workers already running exit and are joined.
      stop(0);
      join();
      return rc;
    }
    workers_.push_back(std::move(worker));
  }
  return 0;
}

Error Engine::add(const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port) {
  if (!running()) return {-EBADF, "add"};
  int family = config.listen.family();
  int type = config.proto == Proto::kTcp ? SOCK_STREAM : SOCK_DGRAM;
  UniqueFd fd(socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return {-errno, "socket"};
  int one = 1;
  // SO_REUSEADDR lets a restarted forwarder bind while old connections sit in
  // TIME_WAIT; it does not let two listeners share a port (that is SO_REUSEPORT).
  // docker-proxy sets it on TCP only, and so do we.
  if (config.proto == Proto::kTcp && setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    return {-errno, "setsockopt"};
  }
  if (family == AF_INET6) {
    int v6only = config.ipv6_only ? 1 : 0;
    if (setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0) return {-errno, "setsockopt"};
  }
  // Before listen(), so that every connection accepted inherits them.
  if (config.proto == Proto::kTcp) {
    int rc = set_tcp_options(fd.get(), config);
    if (rc < 0) return {rc, "setsockopt"};
  }
  if (bind(fd.get(), config.listen.get(), config.listen.length) < 0) return {-errno, "bind"};
  if (config.proto == Proto::kTcp && listen(fd.get(), config.backlog) < 0) return {-errno, "listen"};
  return serve_socket(std::move(fd), config, request, id, port);
}

Error Engine::add_socket(UniqueFd fd, const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port) {
  if (!running()) return {-EBADF, "add"};
  // A socket passed in already listens: connections that completed in its queue before
  // this call keep the options they had; every later one inherits these.
  if (config.proto == Proto::kTcp) {
    int rc = set_tcp_options(fd.get(), config);
    if (rc < 0) return {rc, "setsockopt"};
  }
  return serve_socket(std::move(fd), config, request, id, port);
}

Error Engine::serve_socket(UniqueFd fd, const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port) {
  int flags = fcntl(fd.get(), F_GETFL);
  if (flags < 0 || fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) return {-errno, "fcntl"};
  if (fcntl(fd.get(), F_SETFD, FD_CLOEXEC) < 0) return {-errno, "fcntl"};
  SocketAddress bound;
  bound.length = sizeof bound.storage;
  if (getsockname(fd.get(), bound.get(), &bound.length) < 0) return {-errno, "getsockname"};
  if (config.proto == Proto::kUdp) {
    // Learn each datagram's destination address, so that replies leave from it.
    int one = 1;
    if (bound.family() == AF_INET6 && setsockopt(fd.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one) < 0) {
      return {-errno, "setsockopt"};
    }
    // On an IPv6 socket this also covers IPv4-mapped traffic; an IPv6-only one refuses it.
    if (setsockopt(fd.get(), IPPROTO_IP, IP_PKTINFO, &one, sizeof one) < 0 && bound.family() == AF_INET) {
      return {-errno, "setsockopt"};
    }
    // Every client shares this socket's receive queue: the kernel default (about 200 KiB,
    // some 90 datagrams of 1,400 bytes) overflows at the first burst. Ask for more; root
    // may pass net.core.rmem_max, others get what it allows. Memory is used only while
    // datagrams wait.
    int size = kUdpListenBufferSize;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0) {
      setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
  }

  MappingConfig effective = config;
  effective.listen = bound;
  uint32_t mapping_id = next_id_++;
  int owner = -1;
  if (config.proto == Proto::kUdp) {
    owner = next_udp_owner_;
    next_udp_owner_ = (next_udp_owner_ + 1) % options_.threads;
  }
  auto mapping = std::make_shared<Mapping>(mapping_id, effective, std::move(fd), options_.threads, owner);
  mappings_.emplace(mapping_id, mapping);
  broadcast(Command::Kind::kAddMapping, mapping, mapping_id, request);
  *id = mapping_id;
  *port = bound.port();
  return {};
}

int Engine::remove(uint32_t id, uint64_t request) {
  auto it = mappings_.find(id);
  if (it == mappings_.end()) return -ENOENT;
  mappings_.erase(it);
  broadcast(Command::Kind::kRemoveMapping, nullptr, id, request);
  return 0;
}

int Engine::stop_listening(uint32_t id, uint64_t request) {
  auto it = mappings_.find(id);
  if (it == mappings_.end()) return -ENOENT;
  broadcast(Command::Kind::kStopListening, it->second, id, request);
  return 0;
}

int Engine::stop(uint64_t request) {
  if (!running()) return -EALREADY;
  stopping_ = true;
  mappings_.clear();
  broadcast(Command::Kind::kStop, nullptr, 0, request);
  return 0;
}

void Engine::join() {
  for (auto& worker : workers_) worker->join();
  workers_.clear();
}

void Engine::snapshot(std::vector<uint64_t>* rows) const {
  for (const auto& entry : mappings_) {
    size_t at = rows->size();
    rows->resize(at + kStatsFieldCount);
    entry.second->snapshot(rows->data() + at);
  }
}

void Engine::broadcast(Command::Kind kind, const std::shared_ptr<Mapping>& mapping, uint32_t id, uint64_t request) {
  auto barrier = std::make_shared<Barrier>(static_cast<int>(workers_.size()), request);
  // The listening socket is closed by the last worker to let go of it.
  if (kind == Command::Kind::kStopListening) barrier->close_listener = mapping;
  for (auto& worker : workers_) {
    Command command;
    command.kind = kind;
    command.mapping = mapping;
    command.mapping_id = id;
    command.barrier = barrier;
    worker->post(std::move(command));
  }
}

}  // namespace ps
