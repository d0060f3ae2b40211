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
  Counter accepted;   // Client connections accepted.
  Counter active;     // Connections open now.
  Counter failed;     // Connections whose target could not be reached.
  Counter to_target;  // Bytes written to the target.
  Counter to_client;  // Bytes written to the client.
  Counter spliced;    // Bytes moved through a pipe with splice(2).
  Counter copied;     // Bytes moved through a user-space buffer.
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
  kStatsFieldCount,
};

extern const char* const kStatsFieldNames[kStatsFieldCount];

}  // namespace ps

#endif  // PORTSPLICE_PS_COUNTERS_H_
