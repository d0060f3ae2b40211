#include "ps_mapping.h"

namespace ps {

const char* const kStatsFieldNames[kStatsFieldCount] = {"id",
#define PS_COUNTER_NAME(member, name) name,
                                                        PS_COUNTERS(PS_COUNTER_NAME)
#undef PS_COUNTER_NAME
};

void Mapping::snapshot(uint64_t* row) const {
  for (int i = 0; i < kStatsFieldCount; i++) row[i] = 0;
  row[kStatsId] = id_;
  // Unsigned sums wrap, so a gauge raised on one thread and lowered on another still
  // adds up to the right value.
  for (int t = 0; t < threads_; t++) {
    const ThreadCounters& c = counters_[t];
#define PS_COUNTER_SUM(member, name) row[kStats_##member] += c.member.load();
    PS_COUNTERS(PS_COUNTER_SUM)
#undef PS_COUNTER_SUM
  }
}

}  // namespace ps
