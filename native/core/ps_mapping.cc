#include "ps_mapping.h"

namespace ps {

const char* const kStatsFieldNames[kStatsFieldCount] = {
    "id", "accepted", "active", "failed", "toTarget", "toClient", "spliced", "copied",
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
  }
}

}  // namespace ps
