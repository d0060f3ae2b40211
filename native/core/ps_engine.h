// The engine: a set of worker threads and the mappings they serve. It is driven from
// one controlling thread (the JavaScript thread, or the CLI's main thread), which binds
// sockets, posts commands and reads counter snapshots. Commands complete
// asynchronously through the completion callback, which runs on a worker thread.
#ifndef PORTSPLICE_PS_ENGINE_H_
#define PORTSPLICE_PS_ENGINE_H_

#include <stdint.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ps_error.h"
#include "ps_events.h"
#include "ps_mapping.h"
#include "ps_worker.h"

namespace ps {

class Engine {
 public:
  Engine() = default;
  // Stops and joins the workers if that has not been done.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts the worker threads: `options.threads` of them, or one for kAutoThreads, which
  // adds workers under load up to cpu_limit(). Returns 0 or a negative errno (nothing
  // is left running).
  Error start(const EngineOptions& options, CompletionFn on_complete);

  // The CPUs this process may run on: its affinity mask, lowered by a cgroup CPU quota
  // (v2 cpu.max, v1 cpu.cfs_quota_us) on its cgroup or an ancestor; 1 to kMaxThreads.
  static int cpu_limit();

  // Workers running now. Any thread.
  int thread_count() const { return thread_count_.load(std::memory_order_relaxed); }

  // For a busy worker, on its thread: the least busy other worker if it is below
  // `spare_permille` (its load in `*load`), else a new worker if the engine may grow
  // (load 0), else nullptr. The new worker serves every TCP mapping before it starts.
  Worker* spare_worker(Worker* busy, int spare_permille, int64_t now_ms, int* load);

  // Binds `config.listen` (and listens, for TCP) synchronously, so that EADDRINUSE is
  // reported here, then hands the socket to the workers. `request` completes once they
  // serve it. On success sets the mapping's id and the port actually bound.
  Error add(const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port);

  // Serves a socket that is already bound (and listening, for TCP): docker-proxy's
  // -use-listen-fd, where dockerd binds it and passes it as fd 4. `config.listen` is
  // replaced by the socket's address; the socket is made non-blocking and close-on-exec.
  // Completes like add().
  Error add_socket(UniqueFd fd, const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port);

  // Stops a mapping and resets its connections; `request` completes once that is done.
  // Returns -ENOENT for an unknown id.
  int remove(uint32_t id, uint64_t request);

  // Stops accepting on a mapping and closes its listening socket, so that new
  // connections are refused, while its open connections go on (a drain). `request`
  // completes once the socket is closed. Returns -ENOENT for an unknown id.
  int stop_listening(uint32_t id, uint64_t request);

  // Asks every worker to close everything and exit; `request` completes after the last
  // worker has closed its sockets. Then join() returns promptly.
  int stop(uint64_t request);

  // Waits for the workers to exit and frees them, closing their epoll and event fds.
  void join();

  // Appends one row of kStatsFieldCount values per live mapping, in id order.
  void snapshot(std::vector<uint64_t>* rows) const;

  // On the controlling thread.
  bool running() const { return started_ && !stopping_; }

  // Failure events, off until the controlling thread enables them. Any thread.
  EventQueue& events() { return events_; }

 private:
  // The part of add() and add_socket() after the socket is listening (or bound, for UDP).
  Error serve_socket(UniqueFd fd, const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port);

  struct Entry {
    std::shared_ptr<Mapping> mapping;
    bool listening = true;  // False once stop_listening() was broadcast.
  };

  // Adds a worker; with mutex_ held. Returns it, or nullptr with `*error` set (nothing
  // is left running).
  Worker* add_worker(Error* error);
  // With mutex_ held.
  void broadcast(Command::Kind kind, const std::shared_ptr<Mapping>& mapping, uint32_t id, uint64_t request);

  EventQueue events_;  // Before workers_: outlives them.
  EngineOptions options_;
  int max_threads_ = 1;
  CompletionFn on_complete_;
  // Workers are added by busy workers as well as by the controlling thread. mutex_ keeps
  // the set, the mappings and each command's barrier consistent: a worker added while a
  // command is being broadcast is either counted and sent it, or already has its effect.
  // Workers are freed only by join(), after every thread has exited.
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;  // Guarded by mutex_.
  std::map<uint32_t, Entry> mappings_;            // Written with mutex_ held, on the controlling thread.
  std::atomic<int> thread_count_{0};
  uint32_t next_id_ = 1;
  int next_udp_owner_ = 0;  // UDP mappings go to the workers in turn.
  bool started_ = false;
  bool stopping_ = false;  // Written with mutex_ held.
};

}  // namespace ps

#endif  // PORTSPLICE_PS_ENGINE_H_
