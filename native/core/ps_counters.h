// Per-mapping counters. Each engine thread owns one cache line of counters per mapping
// and is its only writer, so updates are plain relaxed stores with no locked instruction
// and no cache-line contention; a reader sums the lines for a snapshot.
#ifndef PORTSPLICE_PS_COUNTERS_H_
#define PORTSPLICE_PS_COUNTERS_H_

#include <stdint.h>
#include <atomic>

namespace ps {

// A counter with a single writer thread and any number of reader threads.
class Counter {
 public:
  void add(uint64_t n) { value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void sub(uint64_t n) { value_.store(value_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  uint64_t load() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

struct alignas(64) ThreadCounters {
  // TCP.
  Counter accepted;  // Client connections accepted.
  Counter active;    // Connections open now.
  Counter failed;    // Connections whose target could not be reached.
  // Both protocols.
  Counter to_target;  // Bytes written to the target.
  Counter to_client;  // Bytes written to the client.
  Counter spliced;    // Bytes moved through a pipe with splice(2).
  Counter copied;     // Bytes moved through a user-space buffer.
  // UDP.
  Counter flows_active;
  Counter flows_created;
  Counter flows_expired;  // No datagram either way for the flow timeout.
  Counter flows_evicted;  // Closed to stay under the flow limit.
  Counter datagrams_to_target;
  Counter datagrams_to_client;
  Counter dropped_no_flow;     // No socket could be opened for a new flow.
  Counter dropped_queue_full;  // EAGAIN or ENOBUFS on send.
  Counter dropped_refused;     // ECONNREFUSED: the target's port is closed.
  Counter dropped_truncated;   // Larger than the receive buffer.
  Counter dropped_other;       // Any other send error.
};

// The fields of a snapshot row, in order; bindings export the names.
enum StatsField {
  kStatsId,
  kStatsAccepted,
  kStatsActive,
  kStatsFailed,
  kStatsToTarget,
  kStatsToClient,
  kStatsSpliced,
  kStatsCopied,
  kStatsFlowsActive,
  kStatsFlowsCreated,
  kStatsFlowsExpired,
  kStatsFlowsEvicted,
  kStatsDatagramsToTarget,
  kStatsDatagramsToClient,
  kStatsDroppedNoFlow,
  kStatsDroppedQueueFull,
  kStatsDroppedRefused,
  kStatsDroppedTruncated,
  kStatsDroppedOther,
  kStatsFieldCount,
};

extern const char* const kStatsFieldNames[kStatsFieldCount];

}  // namespace ps

#endif  // PORTSPLICE_PS_COUNTERS_H_
