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

// Every counter of a mapping, defined once: X(member, name). The per-thread struct, the
// snapshot row and its field names, and the sum over threads are all made from this list;
// JavaScript's list (src/counters.ts) is checked against the names when the addon loads.
// A row is the mapping id followed by these, in this order.
#define PS_COUNTERS(X)                                                                       \
  /* TCP. */                                                                                 \
  X(accepted, "accepted") /* Client connections accepted. */                                 \
  X(active, "active")     /* Connections open now. */                                        \
  /* Both protocols. */                                                                      \
  X(to_target, "toTarget") /* Bytes written to the target. */                                \
  X(to_client, "toClient") /* Bytes written to the client. */                                \
  X(spliced, "spliced")    /* Bytes moved through a pipe with splice(2). */                  \
  X(copied, "copied")      /* Bytes moved through a user-space buffer. */                    \
  /* UDP. */                                                                                 \
  X(flows_active, "flowsActive")                                                             \
  X(flows_created, "flowsCreated")                                                           \
  X(flows_expired, "flowsExpired") /* No datagram either way for the flow timeout. */        \
  X(flows_evicted, "flowsEvicted") /* Closed to stay under the flow limit. */                \
  X(datagrams_to_target, "datagramsToTarget")                                                \
  X(datagrams_to_client, "datagramsToClient")                                                \
  X(dropped_no_flow, "droppedNoFlow")       /* No socket could be opened for a new flow. */  \
  X(dropped_queue_full, "droppedQueueFull") /* EAGAIN or ENOBUFS on send. */                 \
  X(dropped_refused, "droppedRefused")      /* ECONNREFUSED: the target's port is closed. */ \
  X(dropped_truncated, "droppedTruncated")  /* Larger than the receive buffer. */            \
  X(dropped_other, "droppedOther")          /* Any other send error. */                      \
  /* TCP, splice engine: pipes. */                                                           \
  X(pipes, "pipes")                  /* Pipes held now by the mapping's connections. */      \
  X(pipe_fallbacks, "pipeFallbacks") /* Bursts copied because no pipe could be had. */       \
  /* TCP, proxyProtocol. */                                                                  \
  X(proxy_headers_sent, "proxyHeadersSent")         /* PROXY protocol headers sent whole. */ \
  X(proxy_headers_received, "proxyHeadersReceived") /* Valid headers read from clients. */   \
  X(proxy_headers_rejected, "proxyHeadersRejected") /* Bad, oversized or too late. */        \
  /* TCP: connections whose target could not be reached, by reason (ps_events.h's */         \
  /* fail_reason); their sum is the mapping's `failed`. */                                   \
  X(failed_refused, "failedRefused")         /* ECONNREFUSED. */                             \
  X(failed_timeout, "failedTimeout")         /* connectTimeoutMs or ETIMEDOUT. */            \
  X(failed_unreachable, "failedUnreachable") /* EHOSTUNREACH, ENETUNREACH. */                \
  X(failed_other, "failedOther")             /* Any other error (EMFILE, ...). */            \
  X(events_dropped, "eventsDropped")         /* Failure events the full queue dropped. */    \
  /* TCP limits. */                                                                          \
  X(limit_reached, "limitReached") /* Times maxConnections filled up. */                     \
  X(idle_closed, "idleClosed")     /* Reset after idleTimeoutMs with no byte. */

struct alignas(64) ThreadCounters {
#define PS_COUNTER_MEMBER(member, name) Counter member;
  PS_COUNTERS(PS_COUNTER_MEMBER)
#undef PS_COUNTER_MEMBER
};

// The index of each value in a snapshot row: kStatsId, then kStats_<member>.
enum StatsField {
  kStatsId,
#define PS_COUNTER_FIELD(member, name) kStats_##member,
  PS_COUNTERS(PS_COUNTER_FIELD)
#undef PS_COUNTER_FIELD
      kStatsFieldCount,
};

extern const char* const kStatsFieldNames[kStatsFieldCount];

}  // namespace ps

#endif  // PORTSPLICE_PS_COUNTERS_H_
