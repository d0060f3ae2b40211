// A mapping: one listening socket forwarded to one target, shared by every engine thread.
#ifndef PORTSPLICE_PS_MAPPING_H_
#define PORTSPLICE_PS_MAPPING_H_

#include <stdint.h>

#include <memory>

#include "ps_addr.h"
#include "ps_counters.h"
#include "ps_fd.h"

namespace ps {

struct TcpMappingConfig {
  SocketAddress listen;
  SocketAddress target;
  int backlog = 4096;
  int connect_timeout_ms = 30000;
  bool ipv6_only = false;
};

class Mapping {
 public:
  Mapping(uint32_t id, const TcpMappingConfig& config, UniqueFd listen_fd, int threads)
      : id_(id),
        config_(config),
        listen_fd_(std::move(listen_fd)),
        counters_(new ThreadCounters[threads]),
        threads_(threads) {}

  uint32_t id() const { return id_; }
  const TcpMappingConfig& config() const { return config_; }
  int listen_fd() const { return listen_fd_.get(); }
  ThreadCounters& counters(int thread) { return counters_[thread]; }

  // Sums every thread's counters into one snapshot row of kStatsFieldCount values.
  void snapshot(uint64_t* row) const;

 private:
  uint32_t id_;
  TcpMappingConfig config_;
  UniqueFd listen_fd_;
  std::unique_ptr<ThreadCounters[]> counters_;
  int threads_;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_MAPPING_H_
