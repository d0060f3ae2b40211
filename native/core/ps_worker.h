// One engine thread: an epoll loop, the listeners it shares with the other workers,
// the sessions it accepted, its pools, and a queue of commands from the engine.
#ifndef PORTSPLICE_PS_WORKER_H_
#define PORTSPLICE_PS_WORKER_H_

#include <pthread.h>
#include <stdint.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "ps_fd.h"
#include "ps_list.h"
#include "ps_loop.h"
#include "ps_mapping.h"
#include "ps_store.h"
#include "ps_tcp_session.h"
#include "ps_udp.h"

namespace ps {

struct EngineOptions {
  int threads = 1;
  size_t pipe_size = 0;        // F_SETPIPE_SZ for new pipes; 0 keeps the kernel default.
  size_t max_pipes = 0;        // Pipes in use per thread before copying; 0: no limit.
  size_t max_idle_pipes = 64;  // Empty pipes kept per thread for reuse.
};

// Counts workers down to the last one, which reports the command as complete.
struct Barrier {
  Barrier(int count, uint64_t request_id) : remaining(count), request(request_id) {}
  std::atomic<int> remaining;
  std::atomic<int> result{0};  // The first failure a worker reported, or 0.
  uint64_t request;
  std::shared_ptr<Mapping> close_listener;  // Closed by the last worker, if set.
};

struct Command {
  enum class Kind { kAddMapping, kStopListening, kRemoveMapping, kStop };
  Kind kind;
  std::shared_ptr<Mapping> mapping;  // kAddMapping, kStopListening.
  uint32_t mapping_id = 0;           // kRemoveMapping.
  std::shared_ptr<Barrier> barrier;
};

// Called on a worker thread when the last worker has carried out a command.
using CompletionFn = std::function<void(uint64_t request, int result)>;

class Worker final : public EventHandler {
 public:
  Worker(int index, const EngineOptions& options, const CompletionFn* on_complete);
  ~Worker();

  // Creates the epoll set and the wake-up eventfd. Returns 0 or a negative errno.
  int init();
  // Starts the thread with every signal blocked (SIGPIPE above all). Returns 0 or -errno.
  int spawn();
  void join();

  // Queues a command and wakes the thread. Safe from any thread.
  void post(Command command);

  // For sessions, on this worker's thread.
  int index() const { return index_; }
  Loop& loop() { return loop_; }
  PipePool& pipes() { return pipes_; }
  BufferPool& buffers() { return buffers_; }
  int64_t now_ms() const { return now_ms_; }
  void track_connect(TcpSession* session);
  // Makes the loop wake up by `when_ms` to run timers.
  void schedule_timer(int64_t when_ms) {
    if (when_ms < next_timer_ms_) next_timer_ms_ = when_ms;
  }
  // Frees a closed session or flow after the current batch of events.
  void retire(EventHandler* handler) { retired_.push_back(handler); }
  // Scratch space for UDP batches, made when the first UDP mapping arrives.
  UdpBatch* udp_batch() { return udp_batch_.get(); }

  void on_event(Watcher* watcher, uint32_t events) override;

 private:
  // A mapping's shared listening socket as registered in this worker's loop.
  struct Listener final : EventHandler {
    Listener(Worker* owner, std::shared_ptr<Mapping> m) : worker(owner), mapping(std::move(m)) {
      watcher.fd = mapping->listen_fd();
      watcher.handler = this;
    }
    void on_event(Watcher*, uint32_t) override { worker->accept_connections(this); }

    Worker* worker;
    std::shared_ptr<Mapping> mapping;
    Watcher watcher;
    int64_t paused_until = 0;  // Set while accepting is paused for lack of fds.
    bool stopped = false;      // No longer accepting: the mapping is draining.
  };

  static void* thread_main(void* self);
  void run();
  void run_commands();
  void add_mapping(std::shared_ptr<Mapping> mapping, const std::shared_ptr<Barrier>& barrier);
  void run_timers();
  void accept_connections(Listener* listener);
  void pause_listener(Listener* listener);
  void remove_mapping(uint32_t mapping_id);
  void stop();
  void stop_listening(uint32_t mapping_id);
  void free_retired();
  // Counts this worker off the barrier; the last worker reports the command complete.
  void complete(const std::shared_ptr<Barrier>& barrier, int result);

  int index_;
  const CompletionFn* on_complete_;
  Loop loop_;
  UniqueFd wake_fd_;
  Watcher wake_watcher_;
  pthread_t thread_{};
  bool started_ = false;
  bool running_ = true;
  int64_t now_ms_ = 0;
  int64_t next_timer_ms_ = INT64_MAX;

  std::mutex mutex_;
  std::vector<Command> queue_;     // Guarded by mutex_.
  std::vector<Command> commands_;  // The batch being carried out, on this thread.
  bool wake_pending_ = false;

  PipePool pipes_;
  BufferPool buffers_;
  std::vector<std::unique_ptr<Listener>> listeners_;  // TCP mappings.
  std::vector<std::unique_ptr<UdpForwarder>> udp_;    // UDP mappings this worker owns.
  std::unique_ptr<UdpBatch> udp_batch_;
  List<TcpSession> sessions_;
  List<TcpSession> connecting_;
  std::vector<EventHandler*> retired_;  // Freed after the current batch of events.
};

}  // namespace ps

#endif  // PORTSPLICE_PS_WORKER_H_
