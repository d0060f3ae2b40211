// portsplice-docker-proxy: a drop-in replacement for Docker's docker-proxy, built on
// the same engine as the portsplice addon. dockerd starts one per published port:
//
//   portsplice-docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080
//       -container-ip 172.17.0.2 -container-port 80 [-use-listen-fd]
//
// and expects "0\n" on fd 3 once it listens. SIGINT or SIGTERM stops it.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "../core/ps_addr.h"
#include "../core/ps_engine.h"
#include "../core/ps_error.h"
#include "../core/ps_fd.h"
#include "../core/ps_mapping.h"
#include "flags.h"
#include "status_pipe.h"

#ifndef PORTSPLICE_VERSION
#define PORTSPLICE_VERSION "unknown"
#endif

namespace {

// The descriptors dockerd hands over: the status pipe, and with -use-listen-fd the
// socket it has bound for us.
constexpr int kStatusFd = 3;
constexpr int kListenFd = 4;

constexpr uint64_t kAddRequest = ps::kFirstRequest;

// docker-proxy dials the container with no timeout of its own, leaving it to the
// kernel's SYN retries (about two minutes); so does this one, in effect.
constexpr int kNoConnectTimeoutMs = INT_MAX;

// Descriptors kept back from UDP flows, for the listener, the engine and the pipes.
constexpr rlim_t kReservedFds = 32;

// The UDP flow timeout, in milliseconds, instead of docker-proxy's fixed 90 s (users ask
// for it, moby#47879). dockerd's environment reaches the proxy, so it is set where dockerd
// runs (a systemd drop-in's Environment=).
constexpr const char* kUdpTimeoutVariable = "PORTSPLICE_UDP_TIMEOUT_MS";

// What the engine's completion callback tells the main thread, which waits on the
// eventfd together with the signalfd.
struct Completion {
  int event_fd = -1;
  std::atomic<int> add_result{1};  // 1 until the workers serve the mapping.
};

// Logs an error for whoever runs the proxy by hand (dockerd attaches no stderr), and
// reports it to the parent. Returns docker-proxy's exit code for a failure to start.
int fail(ps_cli::StatusPipe* status, const std::string& text) {
  dprintf(2, "portsplice-docker-proxy: %s\n", text.c_str());
  status->report_error(text.c_str());
  return 1;
}

// Go's text for an errno: strerror in lower case, "address already in use", followed
// by the symbolic name, which is easier to search for.
std::string describe_errno(int negative_errno) {
  std::string text = ps::errno_text(negative_errno);
  if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z') text[0] = static_cast<char>(text[0] - 'A' + 'a');
  return text + " (" + ps::errno_name(negative_errno) + ")";
}

// Go lets a process use as many descriptors as its hard limit allows (os package init);
// a proxy with many connections needs them.
void raise_fd_limit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// Parses an address literal as Go's net.ParseIP does, including its treatment of an
// IPv4-mapped IPv6 address ("::ffff:10.0.0.1") as IPv4.
bool parse_ip(const std::string& text, uint16_t port, ps::SocketAddress* out) {
  if (ps::parse_address(text.c_str(), port, out) < 0) return false;
  if (out->family() == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&out->storage);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
      char v4[INET_ADDRSTRLEN];
      if (inet_ntop(AF_INET, v6->sin6_addr.s6_addr + 12, v4, sizeof v4) == nullptr) return false;
      return ps::parse_address(v4, port, out) == 0;
    }
  }
  return true;
}

// "10.0.0.1:80" or "[::1]:80", as Go prints addresses in its errors.
std::string format_address(const std::string& ip, int64_t port) {
  bool v6 = ip.find(':') != std::string::npos;
  return (v6 ? "[" + ip + "]" : ip) + ":" + std::to_string(port);
}

bool valid_port(int64_t port) {
  return port >= 1 && port <= 65535;
}

// Turns the flags into a mapping. Returns an empty string, or the error for dockerd.
std::string build_mapping(const ps_cli::Options& options, ps::MappingConfig* config) {
  if (options.proto == "tcp") {
    config->proto = ps::Proto::kTcp;
  } else if (options.proto == "udp") {
    config->proto = ps::Proto::kUdp;
  } else if (options.proto != "sctp") {
    return "unsupported protocol " + options.proto;
  }
  // With -use-listen-fd the socket's own port is served and -host-port is only a label.
  if (!options.use_listen_fd && !valid_port(options.host_port)) {
    return "invalid host port " + std::to_string(options.host_port) + ": it must be between 1 and 65535";
  }
  if (!valid_port(options.container_port)) {
    return "invalid container port " + std::to_string(options.container_port) + ": it must be between 1 and 65535";
  }
  uint16_t host_port = valid_port(options.host_port) ? static_cast<uint16_t>(options.host_port) : 0;
  if (!parse_ip(options.host_ip, host_port, &config->listen)) {
    return "invalid value \"" + options.host_ip + "\" for flag -host-ip: invalid IP address: " + options.host_ip;
  }
  if (!parse_ip(options.container_ip, static_cast<uint16_t>(options.container_port), &config->target)) {
    return "invalid value \"" + options.container_ip +
           "\" for flag -container-ip: invalid IP address: " + options.container_ip;
  }
  // Like Go's "tcp6"/"udp6" listeners, an IPv6 host address does not take IPv4 traffic:
  // dockerd starts a separate proxy for 0.0.0.0.
  config->ipv6_only = config->listen.family() == AF_INET6;
  config->connect_timeout_ms = kNoConnectTimeoutMs;
  // docker-proxy has no limit on UDP flows, short of running out of descriptors. Here
  // the least recently used flow makes room instead of the new one being dropped.
  rlimit limit;
  rlim_t flows = UINT32_MAX;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    flows = limit.rlim_cur > 2 * kReservedFds ? limit.rlim_cur - kReservedFds : kReservedFds;
  }
  config->udp_max_flows = static_cast<uint32_t>(flows < UINT32_MAX ? flows : UINT32_MAX);
  if (const char* text = getenv(kUdpTimeoutVariable)) {
    char* end = nullptr;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno != 0 || value < 1 || value > INT_MAX) {
      return std::string(kUdpTimeoutVariable) + "=\"" + text +
             "\": it must be a whole number of milliseconds from 1 to " + std::to_string(INT_MAX);
    }
    config->udp_timeout_ms = static_cast<int>(value);
  }
  return std::string();
}

// The engine has no SCTP, but a kernel without SCTP deserves its own message, since
// docker-proxy would fail there as well.
std::string sctp_error(int family) {
  ps::UniqueFd probe(socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_SCTP));
  if (!probe.valid()) {
    int error = -errno;
    if (error == -EPROTONOSUPPORT || error == -ESOCKTNOSUPPORT) {
      return "sctp is not supported by this kernel: " + describe_errno(error);
    }
    return "sctp: socket: " + describe_errno(error);
  }
  return "sctp forwarding is not implemented by portsplice yet";
}

// Docker 29 attaches a drop-all classic BPF filter ("ret #0") to the socket before binding
// it, so that nothing queues up before its NAT rules exist, and dockerd takes it off
// (SO_DETACH_FILTER) just before starting the proxy; docker-proxy itself never does. A
// dockerd that left it on would leave a proxy that drops every SYN and datagram, so that
// filter, and only that one, is taken off here too: any other filter was put there on
// purpose. Returns an empty string, or the error for dockerd.
std::string detach_drop_all_filter(int fd) {
  // SO_GET_FILTER counts in instructions, not bytes: a length of 0 asks for the count,
  // and 0 comes back when there is no filter (or -EACCES for an eBPF program, which has
  // no classic form and is none of dockerd's).
  socklen_t count = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &count) < 0 || count != 1) return std::string();
  sock_filter instruction{};
  count = 1;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, &instruction, &count) < 0 || count != 1) return std::string();
  if (instruction.code != (BPF_RET | BPF_K) || instruction.k != 0) return std::string();
  int ignored = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &ignored, sizeof ignored) < 0 && errno != ENOENT) {
    // EPERM: locked with SO_LOCK_FILTER. Serving would drop everything: say so instead.
    return "cannot detach the drop-all socket filter on listen fd 4: " + describe_errno(-errno);
  }
  return std::string();
}

// Checks the socket dockerd passed as fd 4 and takes it over: dockerd creates it blocking
// (the engine makes it non-blocking, as docker-proxy does) and close-on-exec, with
// IPV6_V6ONLY=1 for IPv6 (moby's tests also pass a dual-stack one: its V6ONLY is never
// changed) and, for TCP, already listening. Returns an empty string, or the error for
// dockerd.
std::string adopt_listen_fd(const ps::MappingConfig& config, ps::UniqueFd* out) {
  if (fcntl(kListenFd, F_GETFD) < 0) return "-use-listen-fd was given, but fd 4 is not open";
  ps::UniqueFd fd(kListenFd);
  int type = 0;
  socklen_t length = sizeof type;
  if (getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &length) < 0) {
    return "listen fd 4 is not a socket: " + describe_errno(-errno);
  }
  int wanted = config.proto == ps::Proto::kTcp ? SOCK_STREAM : SOCK_DGRAM;
  if (type != wanted) {
    return std::string("unexpected socket type for listener fd: ") + (type == SOCK_STREAM ? "tcp" : "not tcp") +
           " socket for -proto " + (config.proto == ps::Proto::kTcp ? "tcp" : "udp");
  }
  if (config.proto == ps::Proto::kTcp) {
    // dockerd passes it listening; a socket that is only bound is put to listen here
    // rather than left to fail every accept.
    int listening = 0;
    length = sizeof listening;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0 && !listening &&
        listen(fd.get(), config.backlog) < 0) {
      return "listen on fd 4: " + describe_errno(-errno);
    }
  }
  std::string error = detach_drop_all_filter(fd.get());
  if (!error.empty()) return error;
  *out = std::move(fd);
  return std::string();
}

// Waits for the workers to serve the mapping, or for a stop signal. Returns 0 once
// served, 1 if a signal came first, or the workers' negative errno.
int wait_until_served(const Completion& completion, int signal_fd) {
  pollfd fds[2] = {{completion.event_fd, POLLIN, 0}, {signal_fd, POLLIN, 0}};
  for (;;) {
    int result = completion.add_result.load(std::memory_order_acquire);
    if (result <= 0) return result;
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return -errno;
    if (fds[1].revents & POLLIN) return 1;
  }
}

// Blocks until SIGINT or SIGTERM arrives on the signalfd.
void wait_for_stop_signal(int signal_fd) {
  signalfd_siginfo info;
  for (;;) {
    ssize_t n = read(signal_fd, &info, sizeof info);
    if (n == static_cast<ssize_t>(sizeof info)) return;
    if (n < 0 && errno != EINTR) return;  // Cannot wait any more: stop rather than spin.
  }
}

}  // namespace

int main(int argc, char** argv) {
  // A write to a connection the peer has closed must fail with EPIPE, not kill the proxy.
  signal(SIGPIPE, SIG_IGN);
  // dockerd stops proxies with SIGINT and waits without a timeout, so the signals are
  // read from a signalfd rather than left to kill the process. Blocked now, before any
  // thread starts, so that no thread can take them. A signal ignored on entry (a shell
  // starts background jobs with SIGINT ignored) would never reach the signalfd: like Go's
  // signal.Notify, take it back.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop_signals, nullptr);

  // Taken before this process opens a descriptor that could land on a free fd 3.
  ps_cli::StatusPipe status(kStatusFd);
  raise_fd_limit();

  ps_cli::Options options;
  std::string error;
  switch (ps_cli::parse_flags(argc, argv, &options, &error)) {
    case ps_cli::ParseResult::kHelp:
      ps_cli::print_usage(argv[0]);
      return 0;
    case ps_cli::ParseResult::kError:
      // As Go's flag package: the error and the usage on stderr, exit 2. The error also
      // goes to dockerd, which would otherwise only see the pipe close.
      dprintf(2, "%s\n", error.c_str());
      ps_cli::print_usage(argv[0]);
      status.report_error(error.c_str());
      return 2;
    case ps_cli::ParseResult::kOk:
      break;
  }
  if (options.print_version) {
    dprintf(1, "portsplice-docker-proxy (portsplice) version %s\n", PORTSPLICE_VERSION);
    return 0;
  }

  ps::MappingConfig config;
  error = build_mapping(options, &config);
  if (!error.empty()) return fail(&status, error);
  if (options.proto == "sctp") return fail(&status, sctp_error(config.listen.family()));

  ps::UniqueFd listen_fd;
  if (options.use_listen_fd) {
    error = adopt_listen_fd(config, &listen_fd);
    if (!error.empty()) return fail(&status, error);
  }

  ps::UniqueFd signal_fd(signalfd(-1, &stop_signals, SFD_CLOEXEC));
  if (!signal_fd.valid()) return fail(&status, "signalfd: " + describe_errno(-errno));
  Completion completion;
  ps::UniqueFd event_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event_fd.valid()) return fail(&status, "eventfd: " + describe_errno(-errno));
  completion.event_fd = event_fd.get();

  // One worker while idle, more under load: a proxy serves one port, and dockerd may
  // start thousands of them. PORTSPLICE_THREADS ("auto" or 1-64) overrides, since
  // docker-proxy's flags have no place for it.
  ps::EngineOptions engine_options;
  engine_options.threads = ps::kAutoThreads;
  if (const char* threads = getenv("PORTSPLICE_THREADS"); threads != nullptr && strcmp(threads, "auto") != 0) {
    char* end = nullptr;
    long n = strtol(threads, &end, 10);
    if (*threads == '\0' || *end != '\0' || n < 1 || n > ps::kMaxThreads) {
      return fail(&status, std::string("PORTSPLICE_THREADS must be auto or a number from 1 to ") +
                               std::to_string(ps::kMaxThreads) + ", got \"" + threads + "\"");
    }
    engine_options.threads = static_cast<int>(n);
  }
  ps::Engine engine;
  ps::Error started = engine.start(engine_options, [&completion](uint64_t request, int result) {
    if (request != kAddRequest) return;
    completion.add_result.store(result, std::memory_order_release);
    uint64_t one = 1;
    ssize_t written = write(completion.event_fd, &one, sizeof one);
    (void)written;  // The counter cannot overflow with one write; poll sees it.
  });
  if (started.code < 0) {
    return fail(&status,
                std::string("cannot start the engine: ") + started.syscall + ": " + describe_errno(started.code));
  }

  uint32_t id = 0;
  uint16_t port = 0;
  std::string where = format_address(options.host_ip, options.host_port);
  ps::Error added = options.use_listen_fd ? engine.add_socket(std::move(listen_fd), config, kAddRequest, &id, &port)
                                          : engine.add(config, kAddRequest, &id, &port);
  if (added.code < 0) {
    return fail(&status, "failed to listen on " + where + ": " + added.syscall + ": " + describe_errno(added.code));
  }
  int rc = wait_until_served(completion, signal_fd.get());
  if (rc == 1) return 0;  // Stopped before it was ready: dockerd is shutting down.
  if (rc < 0) return fail(&status, "failed to serve " + where + ": " + describe_errno(rc));
  status.report_ready();

  wait_for_stop_signal(signal_fd.get());
  // Like docker-proxy: close the listener and every connection, and exit 0 at once.
  engine.stop(ps::kOwnerStopRequest);
  engine.join();
  return 0;
}
