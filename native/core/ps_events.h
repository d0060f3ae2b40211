// Failure events for whoever embeds the engine (the library's proxy.on('events')): a
// bounded queue the engine threads append to and the controlling thread drains in
// batches. Off by default; while off, a failure costs one relaxed load here and nothing
// else. Failures are rare next to the data path (each one is a connect that did not
// happen), so a mutex per event is cheap and keeps the queue simple.
#ifndef PORTSPLICE_PS_EVENTS_H_
#define PORTSPLICE_PS_EVENTS_H_

#include <errno.h>
#include <stdint.h>
#include <time.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <vector>

#include "ps_addr.h"

namespace ps {

// Why a connection to the target failed; each reason has its own counter
// (failed_refused, ...) and their sum is the mapping's `failed`.
enum class FailReason : uint8_t { kRefused, kTimeout, kUnreachable, kOther };

// `error`: a negative errno from connect(), SO_ERROR or the engine's connect timer.
inline FailReason fail_reason(int error) {
  switch (error) {
    case -ECONNREFUSED:
      return FailReason::kRefused;
    case -ETIMEDOUT:  // The engine's connectTimeoutMs, or the kernel's SYN retries.
      return FailReason::kTimeout;
    case -EHOSTUNREACH:  // ICMP host unreachable, or an `unreachable` route.
    case -ENETUNREACH:   // No route at all.
      return FailReason::kUnreachable;
    default:
      return FailReason::kOther;
  }
}

enum class EventKind : uint8_t {
  kTargetFailure,  // `reason`, `error`, `client`: a connect to the target failed.
  kListenerError,  // `error`: accept() failed on the listener (EMFILE...); it pauses.
  // A limit (maxConnections) is reached: report it with EventQueue::push like the others.
};

struct Event {
  EventKind kind = EventKind::kTargetFailure;
  FailReason reason = FailReason::kOther;
  uint32_t mapping = 0;
  int error = 0;         // Negative errno.
  SocketAddress client;  // kTargetFailure: the client's address (empty if unknown).
  int64_t time_ms = 0;   // CLOCK_REALTIME, for the embedder's logs.
};

class EventQueue {
 public:
  // Called on an engine thread when the queue goes from empty to holding an event, at
  // most once between two take() calls: the embedder then schedules a take().
  using NotifyFn = std::function<void()>;

  static constexpr size_t kCapacity = 1024;

  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // On the controlling thread. Turning it off drops what is queued.
  void enable(NotifyFn notify) {
    std::lock_guard<std::mutex> lock(mutex_);
    notify_ = std::move(notify);
    events_.clear();
    events_.reserve(kCapacity);  // The only allocation: pushes never allocate.
    dropped_ = 0;
    notified_ = false;
    enabled_.store(true, std::memory_order_relaxed);
  }
  void disable() {
    std::lock_guard<std::mutex> lock(mutex_);
    enabled_.store(false, std::memory_order_relaxed);
    events_.clear();
    events_.shrink_to_fit();
    notify_ = nullptr;
  }

  // On an engine thread. Returns false when the queue is full (or off): the event is
  // dropped, and counted here for the next batch; the caller counts it on its mapping.
  bool push(Event event) {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    event.time_ms = static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
    NotifyFn notify;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!enabled_.load(std::memory_order_relaxed)) return false;
      if (events_.size() >= kCapacity) {
        dropped_++;
        return false;
      }
      events_.push_back(event);
      if (!notified_) {
        notified_ = true;
        notify = notify_;
      }
    }
    // Outside the lock: the embedder's call may take its own locks.
    if (notify) notify();
    return true;
  }

  // On the controlling thread: moves the queued events into `out` and returns how many
  // were dropped since the last take().
  uint64_t take(std::vector<Event>* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out->assign(events_.begin(), events_.end());
    events_.clear();
    uint64_t dropped = dropped_;
    dropped_ = 0;
    notified_ = false;
    return dropped;
  }

 private:
  std::atomic<bool> enabled_{false};
  std::mutex mutex_;
  std::vector<Event> events_;  // Guarded by mutex_, at most kCapacity.
  uint64_t dropped_ = 0;       // Guarded by mutex_.
  bool notified_ = false;      // Guarded by mutex_.
  NotifyFn notify_;            // Guarded by mutex_.
};

}  // namespace ps

#endif  // PORTSPLICE_PS_EVENTS_H_
