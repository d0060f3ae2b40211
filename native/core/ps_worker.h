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

#include "ps_error.h"
#include "ps_fd.h"
#include "ps_list.h"
#include "ps_loop.h"
#include "ps_mapping.h"
#include "ps_store.h"
#include "ps_tcp_session.h"
#include "ps_udp.h"
#include "ps_worker_context.h"

namespace ps {

// `threads` as the engine takes it: kAutoThreads starts one worker and adds workers
// while they are busy, up to the CPUs the process may use.
constexpr int kAutoThreads = 0;
constexpr int kMaxThreads = 64;
// Descriptors a worker holds of its own, whatever it serves: its epoll fd and its wake-up
// eventfd (Worker::loop_, Worker::wake_fd_). The soak test counts on it, through the addon.
constexpr int kFdsPerWorker = 2;

struct EngineOptions {
  int threads = 1;             // 1 to kMaxThreads workers, or kAutoThreads.
  size_t pipe_size = 0;        // F_SETPIPE_SZ for new pipes; 0 keeps the kernel default.
  size_t max_pipes = 0;        // Pipes in use per thread before copying; 0: no limit.
  size_t max_idle_pipes = 64;  // Empty pipes kept per thread for reuse.
  // A worker outside epoll_wait this share of the time (in thousandths) for two periods
  // in a row hands work over. The stress test lowers it to hand sessions over all the time.
  int busy_permille = 750;
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
  enum class Kind { kAddMapping, kStopListening, kRemoveMapping, kStop, kAdoptSession };
  Kind kind;
  std::shared_ptr<Mapping> mapping;  // kAddMapping, kStopListening; kAdoptSession: the session's.
  uint32_t mapping_id = 0;           // kRemoveMapping.
  std::shared_ptr<Barrier> barrier;  // Not for kAdoptSession, which nobody waits for.
  TcpSession* session = nullptr;     // kAdoptSession: handed over by a busier worker.
};

// Called on a worker thread when the last worker has carried out a command.
using CompletionFn = std::function<void(uint64_t request, int result)>;

// Request ids: the caller's tag for a command, handed back to the CompletionFn. Two are
// reserved, so that a caller can tell its own commands from those it relays:
// - kNoRequest: nobody waits for the completion. The engine stops itself with it when it
//   is destroyed while running, the addon when its environment goes; the CompletionFn
//   still runs and must ignore it.
// - kOwnerStopRequest: the embedder's own stop (the addon's close(), the binary's exit on
//   a signal), which it handles itself rather than passing it on.
// - kEventsReady: never a command; the addon's own completion saying that failure events
//   wait in the engine's EventQueue (ps_events.h).
// Relayed ids are the ones between (the addon refuses the reserved ones from JavaScript,
// whose ids count up from kFirstRequest).
constexpr uint64_t kNoRequest = 0;
constexpr uint64_t kFirstRequest = 1;
constexpr uint64_t kOwnerStopRequest = UINT64_MAX;
constexpr uint64_t kEventsReady = UINT64_MAX - 1;

class Engine;

// A worker is the WorkerContext of the sessions and forwarders it runs.
class Worker final : public EventHandler, public WorkerContext {
 public:
  // `engine` is asked for a less busy worker (or a new one) when this one is busy.
  Worker(int index, const EngineOptions& options, const CompletionFn* on_complete, Engine* engine);
  ~Worker();

  // Creates the epoll set and the wake-up eventfd. Returns no error, or the failing call's.
  Error init();
  // Starts the thread with every signal blocked (SIGPIPE above all). Returns no error, or
  // pthread_create's.
  Error spawn();
  void join();

  // Before spawn(), on the thread that creates the worker: serves a TCP mapping that the
  // other workers already serve. A mapping that is draining (`listening` false) only
  // keeps its sessions, which may be handed over to this worker, in its care.
  int adopt_mapping(std::shared_ptr<Mapping> mapping, bool listening);

  // This worker's time outside epoll_wait, in thousandths, over its last sampling period; 0
  // when it has not sampled lately (an idle worker sleeps and never samples). Any thread.
  int load_permille(int64_t now_ms) const;

  // Queues a command and wakes the thread. Safe from any thread.
  void post(Command command);

  // WorkerContext: a connection of `mapping` ended while the mapping was at maxConnections.
  void resume_listener(const Mapping* mapping) override;

  void on_event(Watcher* watcher, uint32_t events) override;

 private:
  // A mapping's shared listening socket as registered in this worker's loop.
  struct Listener final : EventHandler {
    Listener(Worker* owner, std::shared_ptr<Mapping> m, bool listening)
        : worker(owner), mapping(std::move(m)), stopped(!listening) {
      // A draining mapping's socket may be closing on another thread: not read then.
      if (listening) watcher.fd = mapping->listen_fd();
      watcher.handler = this;
    }
    void on_event(Watcher*, uint32_t) override { worker->accept_connections(this); }

    Worker* worker;
    std::shared_ptr<Mapping> mapping;
    Watcher watcher;
    int64_t paused_until = 0;  // Set while accepting is paused for lack of fds.
    bool stopped;              // No longer accepting: the mapping is draining.
    bool full = false;         // Not accepting: the mapping is at maxConnections.
    List<TcpSession> idle;     // With an idle timeout: open sessions, least recently active first.
    List<TcpSession>* idle_list() { return mapping->config().idle_timeout_ms > 0 ? &idle : nullptr; }
  };

  static void* thread_main(void* self);
  void run();
  void run_commands();
  void add_mapping(std::shared_ptr<Mapping> mapping, const std::shared_ptr<Barrier>& barrier);
  void run_timers();
  void accept_connections(Listener* listener);
  void pause_listener(Listener* listener);
  // Reports an accept() failure (a negative errno) as a listener event, when events are on.
  void report_listener_error(Listener* listener, int error);
  Listener* find_listener(const Mapping* mapping);
  void remove_mapping(uint32_t mapping_id);
  void stop();
  void stop_listening(uint32_t mapping_id);
  void free_retired();
  // Measures this thread's time outside epoll_wait over the last period and, when it stays busy,
  // hands sessions to a less busy worker (a new one if the engine may grow).
  void sample_load();
  // Hands over open sessions carrying about `fraction` of this worker's recent events.
  void hand_over(Worker* to, double fraction);
  void adopt_session(Command& command);
  // Counts this worker off the barrier; the last worker reports the command complete.
  void complete(const std::shared_ptr<Barrier>& barrier, int result);

  const CompletionFn* on_complete_;
  Engine* engine_;
  int busy_permille_;
  UniqueFd wake_fd_;
  Watcher wake_watcher_;
  pthread_t thread_{};
  bool started_ = false;
  bool running_ = true;

  std::mutex mutex_;
  std::vector<Command> queue_;     // Guarded by mutex_.
  std::vector<Command> commands_;  // The batch being carried out, on this thread.
  bool wake_pending_ = false;

  std::vector<std::unique_ptr<Listener>> listeners_;  // TCP mappings.
  std::vector<std::unique_ptr<UdpForwarder>> udp_;    // UDP mappings this worker owns.
  List<TcpSession> sessions_;

  // Load sampling, on this thread; the result is published for the other workers.
  int64_t sample_start_us_ = 0;
  int64_t waited_us_ = 0;  // In epoll_wait since sample_start_us_.
  int64_t next_sample_ms_ = INT64_MAX;
  int64_t quiet_until_ms_ = 0;  // No hand-over before, after the last one.
  int busy_periods_ = 0;        // Consecutive busy periods.
  std::atomic<int> load_permille_{0};
  std::atomic<int64_t> load_at_ms_{0};
};

}  // namespace ps

#endif  // PORTSPLICE_PS_WORKER_H_
