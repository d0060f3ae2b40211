#include "ps_worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <new>

#include "ps_engine.h"

namespace ps {

namespace {

// Connections accepted per readiness event before other sockets get a turn.
constexpr int kMaxAcceptsPerEvent = 64;
// How long accepting pauses when the process is out of descriptors or memory. Level
// triggered epoll would otherwise report the listener again at once and spin.
constexpr int64_t kAcceptPauseMs = 100;
constexpr size_t kMaxIdleBuffers = 16;

// Load: the share of wall time a worker spends outside epoll_wait, summed from two
// CLOCK_MONOTONIC reads (vDSO, no system call) around each wait and looked at once per
// period, only while the worker is awake anyway: an idle worker sleeps in epoll_wait
// with no timer and costs nothing. Wall time rather than the thread's CPU time
// (CLOCK_THREAD_CPUTIME_ID), because on a machine short of CPU a saturated worker waits
// for a CPU as much as it runs, and its CPU time alone would never look busy. Two busy
// periods in a row (200 ms) outside epoll_wait three quarters of the time or more
// (EngineOptions::busy_permille) hand work over.
constexpr int64_t kSamplePeriodMs = 100;
constexpr int kBusyPeriods = 2;
// A worker below this takes work from a busy one before the engine adds a worker.
constexpr int kSparePermille = 500;
// After a hand-over, time for both workers' loads to show its effect (hysteresis).
constexpr int64_t kQuietAfterHandOverMs = 500;

int64_t monotonic_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace

WorkerContext::WorkerContext(int index, size_t pipe_size, size_t max_pipes, size_t max_idle_pipes,
                             size_t max_idle_buffers)
    : index_(index), pipes_(pipe_size, max_pipes, max_idle_pipes), buffers_(max_idle_buffers) {}

WorkerContext::~WorkerContext() = default;

Worker::Worker(int index, const EngineOptions& options, const CompletionFn* on_complete, Engine* engine)
    : WorkerContext(index, options.pipe_size, options.max_pipes, options.max_idle_pipes, kMaxIdleBuffers),
      on_complete_(on_complete),
      engine_(engine),
      busy_permille_(options.busy_permille) {
  events_ = engine != nullptr ? &engine->events() : nullptr;
}

Worker::~Worker() {
  join();
  // A session handed over after this worker stopped is still queued: reset it. Every
  // thread of the engine has exited by now (Engine::join), so no more can arrive.
  run_commands();
  free_retired();
}

Error Worker::init() {
  int rc = loop_.init();
  if (rc < 0) return {rc, "epoll_create1"};
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return {-errno, "eventfd"};
  wake_fd_.reset(fd);
  wake_watcher_.fd = fd;
  wake_watcher_.handler = this;
  rc = loop_.watch(&wake_watcher_, EPOLLIN);
  if (rc < 0) return {rc, "epoll_ctl"};
  return {};
}

Error Worker::spawn() {
  // Block every signal in the engine thread: SIGPIPE from splice(2) to a reset peer
  // must not kill the process, and SIGINT/SIGTERM belong to the embedding program.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  int rc = pthread_create(&thread_, nullptr, &Worker::thread_main, this);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (rc != 0) return {-rc, "pthread_create"};
  started_ = true;
  // Named for top -H and /proc/PID/task/*/comm: "portsplice-0", "portsplice-1", ... Set
  // here rather than by the thread, so that the name is there when spawn() returns.
  char name[16];
  snprintf(name, sizeof name, "portsplice-%d", index_);
  pthread_setname_np(thread_, name);
  return {};
}

void Worker::join() {
  if (!started_) return;
  pthread_join(thread_, nullptr);
  started_ = false;
}

int Worker::load_permille(int64_t now_ms) const {
  // Relaxed: an estimate; a worker that has not sampled for two periods is asleep.
  if (load_at_ms_.load(std::memory_order_relaxed) < now_ms - 2 * kSamplePeriodMs) return 0;
  return load_permille_.load(std::memory_order_relaxed);
}

void Worker::post(Command command) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(command));
  }
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(wake_fd_.get(), &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  // EAGAIN means the counter is already non-zero: the thread is being woken anyway.
}

void* Worker::thread_main(void* self) {
  static_cast<Worker*>(self)->run();
  return nullptr;
}

void Worker::run() {
  int64_t now_us = monotonic_us();
  now_ms_ = now_us / 1000;
  sample_start_us_ = now_us;
  next_sample_ms_ = now_ms_ + kSamplePeriodMs;
  while (running_) {
    int timeout = -1;
    if (next_timer_ms_ != INT64_MAX) {
      timeout = static_cast<int>(std::clamp<int64_t>(next_timer_ms_ - now_ms_, 0, 60000));
    }
    int64_t wait_start_us = monotonic_us();
    int ready = loop_.wait(timeout);
    now_us = monotonic_us();
    waited_us_ += now_us - wait_start_us;
    now_ms_ = now_us / 1000;
    if (ready > 0) loop_.dispatch(ready);
    // Commands run after the batch, so that none frees a listener or session that a
    // later event of the same batch points at.
    if (wake_pending_) run_commands();
    free_retired();
    if (now_ms_ >= next_timer_ms_) run_timers();
    if (now_ms_ >= next_sample_ms_ && running_) sample_load();
  }
}

void Worker::on_event(Watcher*, uint32_t) {
  uint64_t value;
  ssize_t n;
  do {
    n = read(wake_fd_.get(), &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  wake_pending_ = true;
}

void Worker::run_commands() {
  wake_pending_ = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands_.swap(queue_);
  }
  for (Command& command : commands_) {
    switch (command.kind) {
      case Command::Kind::kAddMapping:
        add_mapping(std::move(command.mapping), command.barrier);
        break;
      case Command::Kind::kStopListening:
        stop_listening(command.mapping_id);
        complete(command.barrier, 0);
        break;
      case Command::Kind::kRemoveMapping:
        remove_mapping(command.mapping_id);
        complete(command.barrier, 0);
        break;
      case Command::Kind::kStop:
        stop();
        complete(command.barrier, 0);
        break;
      case Command::Kind::kAdoptSession:
        adopt_session(command);
        break;
    }
  }
  commands_.clear();
}

void Worker::complete(const std::shared_ptr<Barrier>& barrier, int result) {
  if (result < 0) {
    int expected = 0;
    barrier->result.compare_exchange_strong(expected, result);
  }
  if (barrier->remaining.fetch_sub(1) != 1) return;
  // Every worker has let go of the listening socket before the last one gets here.
  if (barrier->close_listener) barrier->close_listener->close_listener();
  if (on_complete_ != nullptr && *on_complete_) (*on_complete_)(barrier->request, barrier->result.load());
}

void Worker::free_retired() {
  for (EventHandler* handler : retired_) delete handler;
  retired_.clear();
}

void Worker::add_mapping(std::shared_ptr<Mapping> mapping, const std::shared_ptr<Barrier>& barrier) {
  if (mapping->config().proto == Proto::kUdp) {
    if (mapping->owner() != index_) {
      complete(barrier, 0);
      return;
    }
    if (!udp_batch_) udp_batch_ = UdpBatch::create();
    auto forwarder = std::unique_ptr<UdpForwarder>(new (std::nothrow) UdpForwarder(this, std::move(mapping)));
    int rc = !udp_batch_ || !forwarder ? -ENOMEM : forwarder->start();
    if (rc == 0) udp_.push_back(std::move(forwarder));
    complete(barrier, rc);
    return;
  }
  complete(barrier, adopt_mapping(std::move(mapping), true));
}

int Worker::adopt_mapping(std::shared_ptr<Mapping> mapping, bool listening) {
  auto listener = std::unique_ptr<Listener>(new (std::nothrow) Listener(this, std::move(mapping), listening));
  if (!listener) return -ENOMEM;
  int rc = listening ? loop_.watch_exclusive(&listener->watcher, EPOLLIN) : 0;
  if (rc == 0) listeners_.push_back(std::move(listener));
  return rc;
}

void Worker::sample_load() {
  int64_t now_us = monotonic_us();
  int64_t wall_us = std::max<int64_t>(now_us - sample_start_us_, 1);
  int permille = static_cast<int>(std::clamp<int64_t>((wall_us - waited_us_) * 1000 / wall_us, 0, 1000));
  sample_start_us_ = now_us;
  waited_us_ = 0;
  next_sample_ms_ = now_ms_ + kSamplePeriodMs;
  load_permille_.store(permille, std::memory_order_relaxed);
  load_at_ms_.store(now_ms_, std::memory_order_relaxed);
  busy_periods_ = permille >= busy_permille_ ? busy_periods_ + 1 : 0;
  if (busy_periods_ >= kBusyPeriods && now_ms_ >= quiet_until_ms_ && engine_ != nullptr) {
    busy_periods_ = 0;
    quiet_until_ms_ = now_ms_ + (busy_permille_ == 0 ? 0 : kQuietAfterHandOverMs);
    int spare = 0;
    Worker* to = engine_->spare_worker(this, kSparePermille, now_ms_, &spare);
    // Share the difference: half of this worker's work goes to a new (idle) one. With
    // busy_permille 0 (the stress test), every active session, to move as many as can be.
    double fraction = busy_permille_ == 0 ? 1.0 : permille > spare ? (permille - spare) / (2.0 * permille) : 0.5;
    if (to != nullptr) hand_over(to, fraction);
  }
  for (TcpSession* s = sessions_.front(); s != nullptr; s = sessions_.next(&s->all_link)) s->activity = 0;
}

void Worker::hand_over(Worker* to, double fraction) {
  // The busiest sessions first; a session moves only if the share stays within the
  // target, so that a lone busy session is not bounced between workers.
  std::vector<TcpSession*> candidates;
  uint64_t total = 0;
  for (TcpSession* s = sessions_.front(); s != nullptr; s = sessions_.next(&s->all_link)) {
    total += s->activity;
    if (s->movable()) candidates.push_back(s);
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const TcpSession* a, const TcpSession* b) { return a->activity > b->activity; });
  uint64_t share = static_cast<uint64_t>(static_cast<double>(total) * fraction);
  uint64_t moved = 0;
  for (TcpSession* session : candidates) {
    if (session->activity == 0 || moved + session->activity > share) continue;
    auto listener = std::find_if(listeners_.begin(), listeners_.end(), [&](const std::unique_ptr<Listener>& l) {
      return l->mapping.get() == session->mapping();
    });
    if (listener == listeners_.end()) continue;  // Cannot happen: a session's mapping has a listener here.
    moved += session->activity;
    session->detach();
    session->all_link.unlink();
    Command command;
    command.kind = Command::Kind::kAdoptSession;
    // Keeps the mapping alive until the other worker has adopted (or reset) the session,
    // even if this worker removes the mapping meanwhile.
    command.mapping = (*listener)->mapping;
    command.session = session;
    to->post(std::move(command));
  }
}

void Worker::adopt_session(Command& command) {
  TcpSession* session = command.session;
  sessions_.push_back(&session->all_link);
  Listener* listener = find_listener(command.mapping.get());
  session->attach(this, listener != nullptr ? listener->idle_list() : nullptr);
  // The mapping was removed here before the session arrived (or this worker joined the
  // engine after that), or the engine is stopping: reset it as its worker would have.
  if (!running_ || listener == nullptr) session->abort();
}

void Worker::remove_mapping(uint32_t mapping_id) {
  for (auto u = udp_.begin(); u != udp_.end(); ++u) {
    if ((*u)->mapping()->id() == mapping_id) {
      udp_.erase(u);  // Closes its flows.
      return;
    }
  }
  auto it = std::find_if(listeners_.begin(), listeners_.end(),
                         [&](const std::unique_ptr<Listener>& l) { return l->mapping->id() == mapping_id; });
  if (it == listeners_.end()) return;
  Mapping* mapping = (*it)->mapping.get();
  loop_.forget(&(*it)->watcher);
  (*it)->stopped = true;  // Its sessions' slots, given back below, must not re-arm it.
  for (TcpSession* session = sessions_.front(); session != nullptr;) {
    TcpSession* next = sessions_.next(&session->all_link);
    if (session->mapping() == mapping) session->abort();
    session = next;
  }
  listeners_.erase(it);
}

void Worker::stop_listening(uint32_t mapping_id) {
  // A UDP flow replies through the listening socket, so a UDP mapping cannot outlive
  // it: it stops altogether.
  for (auto& forwarder : udp_) {
    if (forwarder->mapping()->id() == mapping_id) forwarder->stop();
  }
  for (auto& listener : listeners_) {
    if (listener->mapping->id() != mapping_id) continue;
    loop_.forget(&listener->watcher);
    listener->stopped = true;
    listener->paused_until = 0;
  }
}

void Worker::stop() {
  running_ = false;
  for (auto& listener : listeners_) loop_.forget(&listener->watcher);
  while (TcpSession* session = sessions_.front()) session->abort();
  udp_.clear();
  free_retired();
  listeners_.clear();
  udp_batch_.reset();
  pipes_.clear();
  buffers_.clear();
}

void Worker::accept_connections(Listener* listener) {
  Mapping* mapping = listener->mapping.get();
  const bool limited = mapping->config().max_connections > 0;
  for (int i = 0; i < kMaxAcceptsPerEvent; i++) {
    // At maxConnections this worker leaves the listener alone, so new connections wait
    // in the kernel's backlog (handshake done, not accepted) instead of being accepted and
    // dropped; the worker where a connection ends takes the listener back (resume_listener).
    int slots = limited ? mapping->take_slot() : 0;
    if (limited && slots == 0) {
      loop_.forget(&listener->watcher);
      listener->full = true;
      return;
    }
    int fd = accept4(mapping->listen_fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int error = errno;
      if (limited && mapping->give_slot()) resume_listener(mapping);
      // The connection died in the queue, or a signal: try the next one.
      if (error == EINTR || error == ECONNABORTED || error == EPROTO) continue;
      if (error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM) {
        report_listener_error(listener, -error);
        pause_listener(listener);
      }
      return;  // EAGAIN: the queue is empty.
    }
    UniqueFd client(fd);
    auto* session = new (std::nothrow) TcpSession(this, mapping, std::move(client), listener->idle_list());
    if (session == nullptr) {
      if (limited) mapping->give_slot();
      pause_listener(listener);
      return;
    }
    // The connection that filled the mapping (counted once per time it fills, whichever
    // worker accepted it).
    if (limited && slots == mapping->config().max_connections) mapping->counters(index_).limit_reached.add(1);
    sessions_.push_back(&session->all_link);
    int rc = session->start();
    if (rc == -EMFILE || rc == -ENFILE || rc == -ENOBUFS || rc == -ENOMEM) {
      pause_listener(listener);
      return;
    }
  }
}

void Worker::report_listener_error(Listener* listener, int error) {
  EventQueue& events = engine_->events();
  if (!events.enabled()) return;
  Event event;
  event.kind = EventKind::kListenerError;
  event.mapping = listener->mapping->id();
  event.error = error;
  // The listener pauses for kAcceptPauseMs after this: at most one event per pause.
  if (!events.push(event)) listener->mapping->counters(index_).events_dropped.add(1);
}

void Worker::pause_listener(Listener* listener) {
  loop_.forget(&listener->watcher);
  listener->paused_until = now_ms_ + kAcceptPauseMs;
  next_timer_ms_ = std::min(next_timer_ms_, listener->paused_until);
}

Worker::Listener* Worker::find_listener(const Mapping* mapping) {
  for (auto& listener : listeners_) {
    if (listener->mapping.get() == mapping) return listener.get();
  }
  return nullptr;
}

void Worker::resume_listener(const Mapping* mapping) {
  // Whichever worker a slot comes back on takes the listener back, so that while the
  // mapping is below its limit at least one worker is accepting (the others resume when a
  // connection ends on them). Not while stopping, draining, or paused for lack of fds.
  if (!running_) return;
  Listener* listener = find_listener(mapping);
  if (listener == nullptr || !listener->full || listener->stopped) return;
  listener->full = false;
  if (listener->paused_until == 0) loop_.watch_exclusive(&listener->watcher, EPOLLIN);
}

void WorkerContext::track_connect(TcpSession* session) {
  connecting_.push_back(&session->connecting_link);
  next_timer_ms_ = std::min(next_timer_ms_, session->connect_deadline());
}

void Worker::run_timers() {
  int64_t next = INT64_MAX;
  for (auto& listener : listeners_) {
    // Idle timeouts: the list is ordered by last activity, so only its front is looked at.
    while (TcpSession* oldest = listener->idle.front()) {
      if (oldest->idle_deadline() > now_ms_) {
        next = std::min(next, oldest->idle_deadline());
        break;
      }
      oldest->on_idle_timeout();  // Leaves the list.
    }
    if (listener->paused_until == 0 || listener->stopped) continue;
    if (listener->paused_until <= now_ms_) {
      listener->paused_until = 0;
      if (!listener->full) loop_.watch_exclusive(&listener->watcher, EPOLLIN);
    } else {
      next = std::min(next, listener->paused_until);
    }
  }
  for (auto& forwarder : udp_) next = std::min(next, forwarder->expire(now_ms_));
  for (TcpSession* session = connecting_.front(); session != nullptr;) {
    TcpSession* following = connecting_.next(&session->connecting_link);
    if (session->connect_deadline() <= now_ms_) {
      session->on_connect_timeout();
    } else {
      next = std::min(next, session->connect_deadline());
    }
    session = following;
  }
  next_timer_ms_ = next;
}

}  // namespace ps
