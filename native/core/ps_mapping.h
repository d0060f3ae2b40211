// A mapping: one listening socket forwarded to one target, and its counters.
#ifndef PORTSPLICE_PS_MAPPING_H_
#define PORTSPLICE_PS_MAPPING_H_

#include <stdint.h>

#include <atomic>
#include <memory>

#include "ps_addr.h"
#include "ps_counters.h"
#include "ps_fd.h"
#include "ps_proxy_protocol.h"

namespace ps {

enum class Proto { kTcp, kUdp };

// TCP keep-alive on both sockets of a connection. The defaults are docker-proxy's (Go
// 1.23+): a peer that vanished is given up after 15 + 9 * 15 = 150 s of silence.
struct KeepAlive {
  bool enabled = true;
  int idle_s = 15;      // TCP_KEEPIDLE, 1 to 32767 (the kernel's MAX_TCP_KEEPIDLE).
  int interval_s = 15;  // TCP_KEEPINTVL, 1 to 32767.
  int count = 9;        // TCP_KEEPCNT, 1 to 127.
};

struct MappingConfig {
  Proto proto = Proto::kTcp;
  SocketAddress listen;
  SocketAddress target;
  bool ipv6_only = false;
  // TCP.
  int backlog = 4096;
  int connect_timeout_ms = 30000;
  KeepAlive keep_alive;
  // UDP: a flow expires after this long with no datagram in either direction.
  int udp_timeout_ms = 90000;
  // UDP: flows at once; beyond it the least recently active flow is evicted.
  uint32_t udp_max_flows = 4096;
  // TCP: a PROXY protocol header sent to the target before any client byte.
  ProxyProtocol proxy_protocol = ProxyProtocol::kOff;
  // TCP: every client starts with a PROXY header (v1 or v2), read before connecting; its
  // addresses are the client's for a header sent onwards.
  bool accept_proxy_protocol = false;
  // TCP: connections open at once (0: no limit); at the limit every worker stops accepting
  // and new connections wait in the listening socket's backlog.
  int max_connections = 0;
  // TCP: an open connection with no byte moved either way for this long is reset (0: never).
  int idle_timeout_ms = 0;
};

class Mapping {
 public:
  // `owner`: for UDP, the one worker that serves the mapping (its flow table is that
  // worker's alone); TCP mappings are served by every worker.
  Mapping(uint32_t id, const MappingConfig& config, UniqueFd listen_fd, int threads, int owner)
      : id_(id),
        config_(config),
        listen_fd_(std::move(listen_fd)),
        counters_(new ThreadCounters[threads]),
        threads_(threads),
        owner_(owner) {}

  uint32_t id() const { return id_; }
  const MappingConfig& config() const { return config_; }
  int listen_fd() const { return listen_fd_.get(); }
  int owner() const { return owner_; }
  ThreadCounters& counters(int thread) { return counters_[thread]; }

  // maxConnections, shared by every worker serving the mapping. Takes a slot before accept4()
  // so that workers racing for the last one cannot overshoot: returns the number of slots
  // in use with this one, or 0 when the mapping is full (nothing taken).
  int take_slot() {
    int used = open_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (used <= config_.max_connections) return used;
    open_.fetch_sub(1, std::memory_order_relaxed);
    return 0;
  }
  // Gives a slot back; true when the mapping was full, so the caller resumes accepting.
  bool give_slot() { return open_.fetch_sub(1, std::memory_order_relaxed) >= config_.max_connections; }

  // Closes the listening socket; only once no worker uses it any more.
  void close_listener() { listen_fd_.reset(); }

  // Sums every thread's counters into one snapshot row of kStatsFieldCount values.
  void snapshot(uint64_t* row) const;

 private:
  uint32_t id_;
  MappingConfig config_;
  UniqueFd listen_fd_;
  std::unique_ptr<ThreadCounters[]> counters_;
  int threads_;
  int owner_;
  // Slots taken (maxConnections only). On a cache line of its own: every worker writes it once
  // per connection, and every event reads config_.
  alignas(64) std::atomic<int> open_{0};
};

}  // namespace ps

#endif  // PORTSPLICE_PS_MAPPING_H_
