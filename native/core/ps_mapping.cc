#include "ps_mapping.h"

namespace ps {

const char* const kStatsFieldNames[kStatsFieldCount] = {
    "id",
    "accepted",
    "active",
    "failed",
    "toTarget",
    "toClient",
    "spliced",
    "copied",
    "flowsActive",
    "flowsCreated",
    "flowsExpired",
    "flowsEvicted",
    "datagramsToTarget",
    "datagramsToClient",
    "droppedNoFlow",
    "droppedQueueFull",
    "droppedRefused",
    "droppedTruncated",
    "droppedOther",
};

void Mapping::snapshot(uint64_t* row) const {
  for (int i = 0; i < kStatsFieldCount; i++) row[i] = 0;
  row[kStatsId] = id_;
  for (int t = 0; t < threads_; t++) {
    const ThreadCounters& c = counters_[t];
    row[kStatsAccepted] += c.accepted.load();
    row[kStatsActive] += c.active.load();
    row[kStatsFailed] += c.failed.load();
    row[kStatsToTarget] += c.to_target.load();
    row[kStatsToClient] += c.to_client.load();
    row[kStatsSpliced] += c.spliced.load();
    row[kStatsCopied] += c.copied.load();
    row[kStatsFlowsActive] += c.flows_active.load();
    row[kStatsFlowsCreated] += c.flows_created.load();
    row[kStatsFlowsExpired] += c.flows_expired.load();
    row[kStatsFlowsEvicted] += c.flows_evicted.load();
    row[kStatsDatagramsToTarget] += c.datagrams_to_target.load();
    row[kStatsDatagramsToClient] += c.datagrams_to_client.load();
    row[kStatsDroppedNoFlow] += c.dropped_no_flow.load();
    row[kStatsDroppedQueueFull] += c.dropped_queue_full.load();
    row[kStatsDroppedRefused] += c.dropped_refused.load();
    row[kStatsDroppedTruncated] += c.dropped_truncated.load();
    row[kStatsDroppedOther] += c.dropped_other.load();
  }
}

}  // namespace ps
