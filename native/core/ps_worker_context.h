// What a TCP session or a UDP forwarder may rely on from the worker thread that runs it,
// and nothing more: the worker's loop, its pools, its clock, its timer and its deferred
// frees. The worker is a WorkerContext; sessions and forwarders see only this part of it,
// so that they need not include ps_worker.h (which includes them).
//
// The contract: every call is made on the worker's own thread, between or during its
// batches of events, never from another thread. The context outlives every session and
// forwarder it runs; a session handed over to another worker switches context in
// TcpSession::attach() and from then on uses only the new one.
#ifndef PORTSPLICE_PS_WORKER_CONTEXT_H_
#define PORTSPLICE_PS_WORKER_CONTEXT_H_

#include <stddef.h>
#include <stdint.h>

#include <memory>
#include <vector>

#include "ps_list.h"
#include "ps_loop.h"
#include "ps_store.h"

namespace ps {

class EventQueue;
class Mapping;
class TcpSession;
struct UdpBatch;

class WorkerContext {
 public:
  WorkerContext(const WorkerContext&) = delete;
  WorkerContext& operator=(const WorkerContext&) = delete;

  // The worker's index: its line in each mapping's per-thread counters.
  int index() const { return index_; }
  Loop& loop() { return loop_; }
  PipePool& pipes() { return pipes_; }
  BufferPool& buffers() { return buffers_; }
  // CLOCK_MONOTONIC milliseconds, read once per batch of events.
  int64_t now_ms() const { return now_ms_; }
  // Watches a connecting session's deadline: on_connect_timeout() runs once it passes,
  // unless the session has left the list (its connecting_link) by then.
  void track_connect(TcpSession* session);
  // A connection of `mapping` ended while the mapping was at maxConnections: this worker
  // takes its listener back (the only virtual call here, made once per connection that ends
  // at the limit).
  virtual void resume_listener(const Mapping* mapping) = 0;
  // Makes the loop wake up by `when_ms` to run timers.
  void schedule_timer(int64_t when_ms) {
    if (when_ms < next_timer_ms_) next_timer_ms_ = when_ms;
  }
  // Frees a closed session or flow after the current batch of events, whose later events
  // may still name it.
  void retire(EventHandler* handler) { retired_.push_back(handler); }
  // Scratch space for UDP batches, made when the first UDP mapping arrives: never null in a
  // UdpForwarder that has started.
  UdpBatch* udp_batch() { return udp_batch_.get(); }
  // The engine's failure events (any thread may push; off until enabled), or null for a
  // worker that runs without an engine.
  EventQueue* events() const { return events_; }

 protected:
  WorkerContext(int index, size_t pipe_size, size_t max_pipes, size_t max_idle_pipes, size_t max_idle_buffers);
  ~WorkerContext();  // Out of line, where UdpBatch is complete.

  int index_;
  Loop loop_;
  int64_t now_ms_ = 0;
  int64_t next_timer_ms_ = INT64_MAX;
  PipePool pipes_;
  BufferPool buffers_;
  std::unique_ptr<UdpBatch> udp_batch_;
  List<TcpSession> connecting_;         // Sessions waiting for connect(), by deadline.
  std::vector<EventHandler*> retired_;  // Freed after the current batch of events.
  EventQueue* events_ = nullptr;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_WORKER_CONTEXT_H_
