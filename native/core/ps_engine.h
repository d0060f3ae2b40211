// The engine: a set of worker threads and the mappings they serve. It is driven from
// one controlling thread (the JavaScript thread, or the CLI's main thread), which binds
// sockets, posts commands and reads counter snapshots. Commands complete
// asynchronously through the completion callback, which runs on a worker thread.
#ifndef PORTSPLICE_PS_ENGINE_H_
#define PORTSPLICE_PS_ENGINE_H_

#include <stdint.h>

#include <map>
#include <memory>
#include <vector>

#include "ps_error.h"
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

  // Starts the worker threads. Returns 0 or a negative errno (nothing is left running).
  int start(const EngineOptions& options, CompletionFn on_complete);

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

  bool running() const { return !workers_.empty() && !stopping_; }

 private:
  // The part of add() and add_socket() after the socket is listening (or bound, for UDP).
  Error serve_socket(UniqueFd fd, const MappingConfig& config, uint64_t request, uint32_t* id, uint16_t* port);
  void broadcast(Command::Kind kind, const std::shared_ptr<Mapping>& mapping, uint32_t id, uint64_t request);

  EngineOptions options_;
  CompletionFn on_complete_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<uint32_t, std::shared_ptr<Mapping>> mappings_;
  uint32_t next_id_ = 1;
  int next_udp_owner_ = 0;  // UDP mappings go to the workers in turn.
  bool stopping_ = false;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_ENGINE_H_
