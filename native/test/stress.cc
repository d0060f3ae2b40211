// portsplice-stress: drives ps::Engine from several threads at once, for ThreadSanitizer
// (and AddressSanitizer; node is not instrumented, so a TSan addon cannot be tested in it).
//
//   portsplice-stress [--seconds N] [--threads N|auto] [--fork]
//
// An engine with 4 worker threads (and a pipe limit, so that bursts also take the copy
// path) forwards to echo servers on 127.0.0.1 and ::1 that run on threads of their own.
// While client threads push TCP connections (echoed payloads, half-closes, resets) and UDP
// datagrams through it over loopback, the control thread adds, drains and removes
// mappings and a stats thread reads snapshots; with --fork another thread keeps forking
// children that hold copies of every descriptor for 20 ms. Every echoed byte is compared.
// At the end the engine is stopped, with its mappings in place and traffic still running,
// and joined; then the process must hold exactly the descriptors it held before. Exits 1
// on any failure, 2 on bad arguments.
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../core/ps_addr.h"
#include "../core/ps_engine.h"
#include "../core/ps_error.h"
#include "../core/ps_fd.h"

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<uint64_t> g_failures{0};

void fail(const std::string& what, const std::string& detail) {
  g_failures.fetch_add(1);
  fprintf(stderr, "portsplice-stress: FAIL: %s: %s\n", what.c_str(), detail.c_str());
}

int count_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') count++;
  }
  closedir(dir);
  return count - 1;  // The directory's own descriptor.
}

int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

ps::SocketAddress loopback(int family, uint16_t port) {
  ps::SocketAddress address;
  ps::parse_address(family == AF_INET6 ? "::1" : "127.0.0.1", port, &address);
  return address;
}

uint16_t local_port(int fd) {
  ps::SocketAddress address;
  address.length = sizeof address.storage;
  if (getsockname(fd, address.get(), &address.length) < 0) return 0;
  return address.port();
}

// Waits up to `timeout_ms` for `events` on `fd`. Returns the revents, or 0 on timeout.
short wait_for(int fd, short events, int timeout_ms) {
  pollfd p = {fd, events, 0};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0 ? p.revents : 0;
}

// --- Echo servers, each on a thread of its own --------------------------------------------

// A TCP echo server: echoes every byte, half-closes after the client's FIN, and resets when
// the client resets. Non-blocking, one poll loop for every connection.
class TcpEcho {
 public:
  explicit TcpEcho(int family) {
    ps::SocketAddress address = loopback(family, 0);
    listen_.reset(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen_.valid() || bind(listen_.get(), address.get(), address.length) < 0 || listen(listen_.get(), 4096) < 0) {
      fail("tcp echo server", strerror(errno));
      return;
    }
    port_ = local_port(listen_.get());
    thread_ = std::thread([this] { run(); });
  }
  ~TcpEcho() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  struct Connection {
    ps::UniqueFd fd;
    std::string pending;
    bool eof = false;
  };

  void run() {
    std::vector<Connection> connections;
    std::vector<pollfd> polls;
    char buffer[65536];
    while (!stop_.load()) {
      polls.assign(1, pollfd{listen_.get(), POLLIN, 0});
      for (auto& c : connections) {
        short events = (c.pending.size() < (1 << 20) && !c.eof ? POLLIN : 0) | (c.pending.empty() ? 0 : POLLOUT);
        polls.push_back(pollfd{c.fd.get(), events, 0});
      }
      if (poll(polls.data(), polls.size(), 50) <= 0) continue;
      for (size_t i = 0; i < connections.size(); i++) {
        Connection& c = connections[i];
        short revents = polls[i + 1].revents;
        if (revents & (POLLIN | POLLHUP | POLLERR)) {
          ssize_t n = recv(c.fd.get(), buffer, sizeof buffer, 0);
          if (n > 0) {
            c.pending.append(buffer, static_cast<size_t>(n));
          } else if (n == 0) {
            c.eof = true;
          } else if (errno != EAGAIN && errno != EINTR) {
            c.fd.reset();  // Reset by the peer (or the proxy).
            continue;
          }
        }
        if (!c.pending.empty()) {
          ssize_t n = send(c.fd.get(), c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
          if (n > 0) {
            c.pending.erase(0, static_cast<size_t>(n));
          } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            c.fd.reset();
            continue;
          }
        }
        if (c.eof && c.pending.empty()) c.fd.reset();  // close() after the client's FIN: FIN back.
      }
      connections.erase(
          std::remove_if(connections.begin(), connections.end(), [](const Connection& c) { return !c.fd.valid(); }),
          connections.end());
      if (polls[0].revents & POLLIN) {
        for (;;) {
          int fd = accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          connections.push_back(Connection{ps::UniqueFd(fd), std::string(), false});
        }
      }
    }
  }

  ps::UniqueFd listen_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A UDP echo server.
class UdpEcho {
 public:
  explicit UdpEcho(int family) {
    ps::SocketAddress address = loopback(family, 0);
    fd_.reset(socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd_.valid() || bind(fd_.get(), address.get(), address.length) < 0) {
      fail("udp echo server", strerror(errno));
      return;
    }
    port_ = local_port(fd_.get());
    thread_ = std::thread([this] { run(); });
  }
  ~UdpEcho() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  void run() {
    std::vector<char> buffer(65536);
    while (!stop_.load()) {
      if (!(wait_for(fd_.get(), POLLIN, 50) & POLLIN)) continue;
      sockaddr_storage from;
      socklen_t length = sizeof from;
      ssize_t n = recvfrom(fd_.get(), buffer.data(), buffer.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
      if (n >= 0)
        sendto(fd_.get(), buffer.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), length);
    }
  }

  ps::UniqueFd fd_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// --- The engine, and the mappings the clients may use -------------------------------------

// Completions arrive on worker threads; the control thread waits for them.
class Completions {
 public:
  void complete(uint64_t request, int result) {
    std::lock_guard<std::mutex> lock(mutex_);
    results_[request] = result;
    done_.notify_all();
  }
  // Returns the result, or -ETIMEDOUT.
  int wait(uint64_t request) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!done_.wait_for(lock, std::chrono::seconds(10), [&] { return results_.count(request) > 0; })) {
      return -ETIMEDOUT;
    }
    int result = results_[request];
    results_.erase(request);
    return result;
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  std::map<uint64_t, int> results_;
};

struct LiveMapping {
  uint32_t id;
  ps::Proto proto;
  int family;
  uint16_t port;
};

// The mappings clients pick from. A mapping leaves this list before it is drained or
// removed, or the engine stopped, so a connection that fails through it is counted as cut;
// through a mapping still listed, every failure is a bug.
class Directory {
 public:
  void add(const LiveMapping& m) {
    std::lock_guard<std::mutex> lock(mutex_);
    live_.push_back(m);
  }
  void retire(uint32_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    live_.erase(std::remove_if(live_.begin(), live_.end(), [&](const LiveMapping& m) { return m.id == id; }),
                live_.end());
  }
  void retire_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    live_.clear();
  }
  bool live(uint32_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::any_of(live_.begin(), live_.end(), [&](const LiveMapping& m) { return m.id == id; });
  }
  bool pick(ps::Proto proto, std::mt19937* random, LiveMapping* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<const LiveMapping*> candidates;
    for (const auto& m : live_) {
      if (m.proto == proto) candidates.push_back(&m);
    }
    if (candidates.empty()) return false;
    *out = *candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(*random)];
    return true;
  }

 private:
  std::mutex mutex_;
  std::vector<LiveMapping> live_;
};

struct Totals {
  std::atomic<uint64_t> tcp_ok{0};
  std::atomic<uint64_t> tcp_reset{0};
  std::atomic<uint64_t> tcp_cut{0};
  std::atomic<uint64_t> tcp_bytes{0};
  std::atomic<uint64_t> udp_ok{0};
  std::atomic<uint64_t> udp_lost{0};
  std::atomic<uint64_t> snapshots{0};
  std::atomic<uint64_t> mappings_added{0};
  std::atomic<uint64_t> forks{0};
};

// --- Clients ------------------------------------------------------------------------------

std::string payload(std::mt19937* random, size_t size) {
  std::string data(size, '\0');
  for (auto& c : data) c = static_cast<char>((*random)() & 0xff);
  return data;
}

// Connects (non-blocking) within `timeout_ms`. Returns the fd, or -errno.
int connect_to(const ps::SocketAddress& address, int timeout_ms) {
  int fd = socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, address.get(), address.length) < 0 && errno != EINPROGRESS) {
    int error = -errno;
    close(fd);
    return error;
  }
  if (!(wait_for(fd, POLLOUT, timeout_ms) & (POLLOUT | POLLERR | POLLHUP))) {
    close(fd);
    return -ETIMEDOUT;
  }
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) {
    close(fd);
    return -error;
  }
  return fd;
}

// Sends `data`, half-closes, and reads the echo to the end. Returns 0 with the echo in
// `echo`, or a negative errno.
int exchange(int fd, const std::string& data, std::string* echo) {
  size_t sent = 0;
  bool shut = false;
  char buffer[65536];
  Clock::time_point start = Clock::now();
  for (;;) {
    if (ms_since(start) > 20000) return -ETIMEDOUT;
    if (sent == data.size() && !shut) {
      shutdown(fd, SHUT_WR);
      shut = true;
    }
    short revents = wait_for(fd, POLLIN | (shut ? 0 : POLLOUT), 1000);
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      if (n == 0) return 0;
      if (n > 0) {
        echo->append(buffer, static_cast<size_t>(n));
      } else if (errno != EAGAIN && errno != EINTR) {
        return -errno;
      }
    }
    if (!shut && (revents & POLLOUT)) {
      ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return -errno;
      }
    }
  }
}

void tcp_client(int index, Directory* directory, Totals* totals, const std::atomic<bool>* stop) {
  std::mt19937 random(1000 + index);
  while (!stop->load()) {
    LiveMapping m;
    if (!directory->pick(ps::Proto::kTcp, &random, &m)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    int roll = std::uniform_int_distribution<int>(0, 99)(random);
    size_t size = roll < 5 ? 0 : roll < 90 ? random() % 16384 : random() % (512 * 1024);
    std::string data = payload(&random, size);
    int fd = connect_to(loopback(m.family, m.port), 5000);
    if (fd < 0) {
      if (directory->live(m.id)) fail("tcp connect", ps::errno_name(fd));
      totals->tcp_cut.fetch_add(1);
      continue;
    }
    ps::UniqueFd owned(fd);
    if (roll >= 95) {
      // Reset halfway: write some, then close with SO_LINGER 0.
      send(fd, data.data(), data.size() / 2, MSG_NOSIGNAL);
      linger lg{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      totals->tcp_reset.fetch_add(1);
      continue;
    }
    std::string echo;
    int rc = exchange(fd, data, &echo);
    if (rc < 0 || echo.size() != data.size() || echo != data) {
      if (!directory->live(m.id)) {
        totals->tcp_cut.fetch_add(1);  // Removed while in flight: reset.
      } else {
        fail("tcp echo", std::string(rc < 0 ? ps::errno_name(rc) : "") + " got " + std::to_string(echo.size()) +
                             " of " + std::to_string(data.size()) + " bytes, port " + std::to_string(m.port));
      }
      continue;
    }
    totals->tcp_ok.fetch_add(1);
    totals->tcp_bytes.fetch_add(2 * data.size());
  }
}

void udp_client(int index, Directory* directory, Totals* totals, const std::atomic<bool>* stop) {
  std::mt19937 random(2000 + index);
  std::vector<char> buffer(65536);
  uint64_t flows = 0;
  while (!stop->load()) {
    LiveMapping m;
    if (!directory->pick(ps::Proto::kUdp, &random, &m)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    // A flow: one socket, some datagrams, each waited for.
    ps::UniqueFd fd(socket(m.family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ps::SocketAddress to = loopback(m.family, m.port);
    if (!fd.valid() || connect(fd.get(), to.get(), to.length) < 0) {
      fail("udp socket", strerror(errno));
      continue;
    }
    int count = 1 + static_cast<int>(random() % 50);
    // Every datagram of this flow starts with its tag. A reply is the datagram just sent
    // or a late one; with another tag it is a late reply to an earlier socket that had the
    // same port (the proxy's flow outlives the socket).
    uint64_t tag = (static_cast<uint64_t>(index) << 48) | ++flows;
    std::vector<std::string> sent;
    for (int i = 0; i < count && !stop->load(); i++) {
      size_t size = random() % 100 == 0 ? 30000 : 8 + random() % 1400;
      sent.push_back(payload(&random, size));
      memcpy(&sent.back()[0], &tag, sizeof tag);
      const std::string& data = sent.back();
      send(fd.get(), data.data(), data.size(), 0);
      bool matched = false;
      while (!matched && (wait_for(fd.get(), POLLIN, 300) & POLLIN)) {
        ssize_t n = recv(fd.get(), buffer.data(), buffer.size(), 0);
        if (n < 0) break;  // ECONNREFUSED: the mapping has just gone.
        std::string reply(buffer.data(), static_cast<size_t>(n));
        matched = reply == data;
        bool ours = reply.size() >= sizeof tag && memcmp(reply.data(), &tag, sizeof tag) == 0;
        if (!matched && ours && std::find(sent.begin(), sent.end(), reply) == sent.end()) {
          fail("udp", "a reply that was never sent, " + std::to_string(n) + " bytes, port " + std::to_string(m.port));
        }
      }
      if (matched) {
        totals->udp_ok.fetch_add(1);
      } else {
        totals->udp_lost.fetch_add(1);
      }
    }
  }
}

// Forks children that hold copies of every descriptor for a while and exit, as a program
// that embeds the engine does when it spawns processes (fork, then exec closes the
// close-on-exec descriptors): a socket closed by the engine meanwhile stays open, and
// stays in the engine's epoll sets unless the engine takes it out itself.
void forker(const std::atomic<bool>* stop, std::atomic<uint64_t>* forks) {
  while (!stop->load()) {
    pid_t pid = fork();
    if (pid == 0) {
      usleep(20000);
      _exit(0);
    }
    if (pid > 0) {
      waitpid(pid, nullptr, 0);
      forks->fetch_add(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Reads snapshots while everything else runs, and checks that counters never go back.
void stats_reader(ps::Engine* engine, std::mutex* engine_mutex, Totals* totals, const std::atomic<bool>* stop) {
  std::map<uint64_t, uint64_t> accepted;
  std::vector<uint64_t> rows;
  while (!stop->load()) {
    rows.clear();
    {
      std::lock_guard<std::mutex> lock(*engine_mutex);
      engine->snapshot(&rows);
    }
    for (size_t at = 0; at + ps::kStatsFieldCount <= rows.size(); at += ps::kStatsFieldCount) {
      uint64_t id = rows[at + ps::kStatsId];
      uint64_t now = rows[at + ps::kStats_accepted];
      uint64_t& before = accepted[id];
      if (now < before) fail("stats", "accepted went back for mapping " + std::to_string(id));
      before = now;
    }
    totals->snapshots.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// --- The control thread -------------------------------------------------------------------

class Control {
 public:
  Control(ps::Engine* engine, std::mutex* engine_mutex, Completions* completions, Directory* directory, Totals* totals)
      : engine_(engine),
        engine_mutex_(engine_mutex),
        completions_(completions),
        directory_(directory),
        totals_(totals) {}

  // Adds a mapping and waits until the workers serve it. Returns its id, or 0.
  uint32_t add(ps::Proto proto, int listen_family, int target_family, uint16_t target_port) {
    ps::MappingConfig config;
    config.proto = proto;
    config.listen = loopback(listen_family, 0);
    config.target = loopback(target_family, target_port);
    config.ipv6_only = listen_family == AF_INET6;
    config.connect_timeout_ms = 5000;
    config.udp_timeout_ms = 300;  // Flows expire during the run.
    config.udp_max_flows = 2;     // And, with 3 clients, some are evicted.
    // With 4 clients, TCP mappings fill up: listeners leave and rejoin the workers' epoll sets
    // while sessions move between workers, which also carry their place in the idle lists.
    config.max_connections = 2;
    config.idle_timeout_ms = 3000;
    uint64_t request = next_request_++;
    uint32_t id = 0;
    uint16_t port = 0;
    ps::Error error;
    {
      std::lock_guard<std::mutex> lock(*engine_mutex_);
      error = engine_->add(config, request, &id, &port);
    }
    if (error.code < 0) {
      fail("add", std::string(error.syscall) + " " + ps::errno_name(error.code));
      return 0;
    }
    int rc = completions_->wait(request);
    if (rc < 0) {
      fail("add completion", ps::errno_name(rc));
      return 0;
    }
    directory_->add(LiveMapping{id, proto, listen_family, port});
    totals_->mappings_added.fetch_add(1);
    return id;
  }

  // Takes a mapping out of the clients' hands, optionally drains it first, and removes it.
  void remove(uint32_t id, bool drain_first) {
    directory_->retire(id);
    if (drain_first) run(id, true);
    run(id, false);
  }

 private:
  void run(uint32_t id, bool drain) {
    uint64_t request = next_request_++;
    int rc;
    {
      std::lock_guard<std::mutex> lock(*engine_mutex_);
      rc = drain ? engine_->stop_listening(id, request) : engine_->remove(id, request);
    }
    if (rc == 0) rc = completions_->wait(request);
    if (rc < 0) fail(drain ? "stop_listening" : "remove", ps::errno_name(rc));
  }

  ps::Engine* engine_;
  std::mutex* engine_mutex_;
  Completions* completions_;
  Directory* directory_;
  Totals* totals_;
  uint64_t next_request_ = ps::kFirstRequest;
};

int run(int seconds, int threads, bool forks) {
  int threads_at_end = 0;  // Workers running when the engine is stopped.
  int fds_before = count_fds();
  Totals totals;
  {
    TcpEcho tcp4(AF_INET), tcp6(AF_INET6);
    UdpEcho udp4(AF_INET), udp6(AF_INET6);
    if (g_failures.load() > 0) return 1;

    ps::Engine engine;
    std::mutex engine_mutex;
    Completions completions;
    Directory directory;
    ps::EngineOptions options;
    options.threads = threads;
    // With auto, every worker counts as busy: workers are added at once and sessions are
    // handed over between them every half second, under all the churn below.
    if (threads == ps::kAutoThreads) options.busy_permille = 0;
    options.max_pipes = 8;  // Beyond 8 bursts in flight a thread copies: both paths run.
    options.max_idle_pipes = 4;
    ps::Error started =
        engine.start(options, [&completions](uint64_t request, int result) { completions.complete(request, result); });
    if (started.code < 0) {
      fail(started.syscall, ps::errno_name(started.code));
      return 1;
    }
    Control control(&engine, &engine_mutex, &completions, &directory, &totals);
    control.add(ps::Proto::kTcp, AF_INET, AF_INET, tcp4.port());
    control.add(ps::Proto::kTcp, AF_INET6, AF_INET, tcp4.port());
    control.add(ps::Proto::kTcp, AF_INET6, AF_INET6, tcp6.port());
    control.add(ps::Proto::kUdp, AF_INET, AF_INET, udp4.port());
    control.add(ps::Proto::kUdp, AF_INET6, AF_INET6, udp6.port());

    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; i++) clients.emplace_back(tcp_client, i, &directory, &totals, &stop);
    for (int i = 0; i < 3; i++) clients.emplace_back(udp_client, i, &directory, &totals, &stop);
    std::thread stats(stats_reader, &engine, &engine_mutex, &totals, &stop);
    std::thread forking;
    if (forks) forking = std::thread(forker, &stop, &totals.forks);

    // Churn: mappings come and go (some drained first) with traffic running through them.
    std::mt19937 random(7);
    std::vector<uint32_t> churn;
    Clock::time_point start = Clock::now();
    while (ms_since(start) < seconds * 1000LL && g_failures.load() == 0) {
      bool v6 = random() % 2 == 0;
      int family = v6 ? AF_INET6 : AF_INET;
      uint32_t id = random() % 3 == 0 ? control.add(ps::Proto::kUdp, family, family, v6 ? udp6.port() : udp4.port())
                                      : control.add(ps::Proto::kTcp, family, AF_INET, tcp4.port());
      if (id != 0) churn.push_back(id);
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + random() % 200));
      if (churn.size() > 3) {
        size_t victim = random() % churn.size();
        control.remove(churn[victim], random() % 2 == 0);
        churn.erase(churn.begin() + static_cast<ptrdiff_t>(victim));
      }
    }

    // Stop the engine with its mappings in place and traffic still running through them:
    // the workers reset the connections and close everything.
    directory.retire_all();
    int rc;
    {
      std::lock_guard<std::mutex> lock(engine_mutex);
      threads_at_end = engine.thread_count();
      rc = engine.stop(ps::kOwnerStopRequest);
    }
    if (rc == 0) rc = completions.wait(ps::kOwnerStopRequest);
    if (rc < 0) fail("stop", ps::errno_name(rc));
    {
      std::lock_guard<std::mutex> lock(engine_mutex);
      engine.join();
    }
    stop.store(true);
    for (auto& t : clients) t.join();
    stats.join();
    if (forking.joinable()) forking.join();
  }
  int fds_after = count_fds();
  if (fds_after != fds_before) {
    fail("descriptors", std::to_string(fds_before) + " before, " + std::to_string(fds_after) + " after");
  }
  printf(
      "portsplice-stress: %d s, %s threads (%d at the end): %llu TCP exchanges verified (%llu MiB), %llu reset by the "
      "client, %llu "
      "cut by removal; %llu UDP datagrams verified, %llu lost; %llu mappings added; %llu snapshots; %llu forks; %llu "
      "failures\n",
      seconds, threads == ps::kAutoThreads ? "auto" : std::to_string(threads).c_str(), threads_at_end,
      static_cast<unsigned long long>(totals.tcp_ok.load()),
      static_cast<unsigned long long>(totals.tcp_bytes.load() >> 20),
      static_cast<unsigned long long>(totals.tcp_reset.load()), static_cast<unsigned long long>(totals.tcp_cut.load()),
      static_cast<unsigned long long>(totals.udp_ok.load()), static_cast<unsigned long long>(totals.udp_lost.load()),
      static_cast<unsigned long long>(totals.mappings_added.load()),
      static_cast<unsigned long long>(totals.snapshots.load()), static_cast<unsigned long long>(totals.forks.load()),
      static_cast<unsigned long long>(g_failures.load()));
  if (totals.tcp_ok.load() == 0 || totals.udp_ok.load() == 0) fail("traffic", "none went through");
  return g_failures.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 10;
  int threads = 4;
  bool forks = false;
  for (int i = 1; i < argc; i++) {
    std::string arg = argv[i];
    if (arg == "--fork") {
      forks = true;
    } else if (arg == "--threads" && i + 1 < argc && std::string(argv[i + 1]) == "auto") {
      // One worker to start with, more (and sessions handed over) as they get busy.
      threads = ps::kAutoThreads;
      i++;
    } else if ((arg == "--seconds" || arg == "--threads") && i + 1 < argc) {
      int value = atoi(argv[++i]);
      if (value < 1) {
        fprintf(stderr, "portsplice-stress: %s must be a positive integer\n", arg.c_str());
        return 2;
      }
      (arg == "--seconds" ? seconds : threads) = value;
    } else {
      fprintf(stderr, "usage: portsplice-stress [--seconds N] [--threads N|auto] [--fork]\n");
      return 2;
    }
  }
  return run(seconds, threads, forks);
}
