#include "ps_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>

namespace ps {

namespace {

constexpr int kUdpListenBufferSize = 4 << 20;

// The start of a small file (/proc, cgroupfs), or "" if it cannot be read.
std::string read_small_file(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return "";
  char buffer[4096];
  ssize_t n;
  do {
    n = read(fd.get(), buffer, sizeof buffer - 1);
  } while (n < 0 && errno == EINTR);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
}

// CPUs a quota of `quota` per `period` microseconds allows, rounded up; 0: no quota.
int quota_cpus(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::min<long long>((quota + period - 1) / period, kMaxThreads));
}

// The lowest CPU quota on `path` (a cgroup, relative to `root`) and its ancestors, or 0.
template <typename ReadQuota>
int lowest_quota(const std::string& root, std::string path, ReadQuota read_quota) {
  int lowest = 0;
  for (;;) {
    int cpus = read_quota(root + path);
    if (cpus > 0 && (lowest == 0 || cpus < lowest)) lowest = cpus;
    if (path.empty() || path == "/") return lowest;
    size_t slash = path.find_last_of('/');
    path = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
  }
}

// The CPU quota of this process' cgroups (v2 and v1), in CPUs, or 0 when there is none.
int cgroup_cpus() {
  std::string cgroups = read_small_file("/proc/self/cgroup");
  int lowest = 0;
  auto lower = [&](int cpus) {
    if (cpus > 0 && (lowest == 0 || cpus < lowest)) lowest = cpus;
  };
  size_t at = 0;
  while (at < cgroups.size()) {
    size_t end = cgroups.find('\n', at);
    if (end == std::string::npos) end = cgroups.size();
    std::string line = cgroups.substr(at, end - at);
    at = end + 1;
    // "hierarchy-id:controllers:path"; v2 is "0::path".
    size_t first = line.find(':');
    size_t second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (controllers.empty()) {
      // cpu.max: "max 100000" (no quota) or "200000 100000".
      lower(lowest_quota("/sys/fs/cgroup", path, [](const std::string& dir) {
        long long quota = 0, period = 0;
        std::string text = read_small_file(dir + "/cpu.max");
        return sscanf(text.c_str(), "%lld %lld", &quota, &period) == 2 ? quota_cpus(quota, period) : 0;
      }));
    } else if (("," + controllers + ",").find(",cpu,") != std::string::npos) {
      // cpu.cfs_quota_us is -1 without a quota. The hierarchy is mounted as
      // cpu,cpuacct on most distributions, with a cpu link to it.
      for (const char* root : {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"}) {
        int cpus = lowest_quota(root, path, [](const std::string& dir) {
          std::string quota = read_small_file(dir + "/cpu.cfs_quota_us");
          std::string period = read_small_file(dir + "/cpu.cfs_period_us");
          if (quota.empty() || period.empty()) return 0;
          return quota_cpus(atoll(quota.c_str()), atoll(period.c_str()));
        });
        if (cpus > 0) {
          lower(cpus);
          break;
        }
      }
    }
  }
  return lowest;
}

}  // namespace

int Engine::cpu_limit() {
  int cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  int quota = cgroup_cpus();
  if (quota > 0 && (cpus <= 0 || quota < cpus)) cpus = quota;
  return std::clamp(cpus, 1, kMaxThreads);
}

Engine::~Engine() {
  if (running()) stop(kNoRequest);
  join();
}

Error Engine::start(const EngineOptions& options, CompletionFn on_complete) {
  if (started_) return {-EALREADY, "start"};
  if (options.threads < kAutoThreads || options.threads > kMaxThreads) return {-EINVAL, "start"};
  options_ = options;
  max_threads_ = options.threads == kAutoThreads ? cpu_limit() : options.threads;
  on_complete_ = std::move(on_complete);
  started_ = true;
  int initial = options.threads == kAutoThreads ? 1 : options.threads;
  Error error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < initial && error.code == 0; i++) add_worker(&error);
  }
  if (error.code < 0) {
    // Undo: the workers already running exit and are joined.
    stop(kNoRequest);
    join();
    started_ = false;
    stopping_ = false;
  }
  return error;
}

Worker* Engine::add_worker(Error* error) {
  int index = static_cast<int>(workers_.size());
  auto worker = std::make_unique<Worker>(index, options_, &on_complete_, this);
  *error = worker->init();
  // The new worker serves the TCP mappings from the start, and draining ones keep its
  // place for their sessions. UDP mappings stay with their owners.
  for (const auto& entry : mappings_) {
    if (error->code < 0) break;
    if (entry.second.mapping->config().proto == Proto::kTcp) {
      int rc = worker->adopt_mapping(entry.second.mapping, entry.second.listening);
      if (rc < 0) *error = {rc, "epoll_ctl"};
    }
  }
  if (error->code == 0) *error = worker->spawn();
  if (error->code < 0) return nullptr;
  workers_.push_back(std::move(worker));
  thread_count_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  return workers_.back().get();
}

Worker* Engine::spare_worker(Worker* busy, int spare_permille, int64_t now_ms, int* load) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return nullptr;
  Worker* best = nullptr;
  int best_load = spare_permille;
  for (const auto& worker : workers_) {
    if (worker.get() == busy) continue;
    int l = worker->load_permille(now_ms);
    if (l < best_load) {
      best = worker.get();
      best_load = l;
    }
  }
  *load = best_load;
  if (best != nullptr) return best;
  *load = 0;
  if (static_cast<int>(workers_.size()) >= max_threads_) return nullptr;
  // A failure (no memory, no thread) leaves the engine as it was.
  Error error;
  return add_worker(&error);
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
  std::lock_guard<std::mutex> lock(mutex_);
  int owner = -1;
  if (config.proto == Proto::kUdp) {
    owner = next_udp_owner_ % static_cast<int>(workers_.size());
    next_udp_owner_ = owner + 1;
  }
  // Counters for every worker there may ever be: a worker added later writes its line.
  auto mapping = std::make_shared<Mapping>(mapping_id, effective, std::move(fd), max_threads_, owner);
  mappings_.emplace(mapping_id, Entry{mapping, true});
  broadcast(Command::Kind::kAddMapping, mapping, mapping_id, request);
  *id = mapping_id;
  *port = bound.port();
  return {};
}

int Engine::remove(uint32_t id, uint64_t request) {
  auto it = mappings_.find(id);
  if (it == mappings_.end()) return -ENOENT;
  std::lock_guard<std::mutex> lock(mutex_);
  mappings_.erase(it);
  broadcast(Command::Kind::kRemoveMapping, nullptr, id, request);
  return 0;
}

int Engine::stop_listening(uint32_t id, uint64_t request) {
  auto it = mappings_.find(id);
  if (it == mappings_.end()) return -ENOENT;
  std::lock_guard<std::mutex> lock(mutex_);
  it->second.listening = false;
  broadcast(Command::Kind::kStopListening, it->second.mapping, id, request);
  return 0;
}

int Engine::stop(uint64_t request) {
  if (!running()) return -EALREADY;
  std::lock_guard<std::mutex> lock(mutex_);
  stopping_ = true;
  mappings_.clear();
  broadcast(Command::Kind::kStop, nullptr, 0, request);
  return 0;
}

void Engine::join() {
  std::vector<std::unique_ptr<Worker>> workers;
  {
    // No worker is added once stopping_ is set, so the set is final.
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    workers.swap(workers_);
  }
  // Every thread exits before any worker is freed: a worker may hand a session to
  // another until it stops.
  for (auto& worker : workers) worker->join();
  workers.clear();
  thread_count_.store(0, std::memory_order_relaxed);
}

void Engine::snapshot(std::vector<uint64_t>* rows) const {
  for (const auto& entry : mappings_) {
    size_t at = rows->size();
    rows->resize(at + kStatsFieldCount);
    entry.second.mapping->snapshot(rows->data() + at);
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
