// One forwarded TCP connection: the accepted client socket, the socket to the target,
// and a direction of bytes each way. Bytes move socket -> pipe -> socket with splice(2),
// or through a pooled buffer when splice cannot be used.
#ifndef PORTSPLICE_PS_TCP_SESSION_H_
#define PORTSPLICE_PS_TCP_SESSION_H_

#include <stdint.h>
#include <sys/types.h>

#include <memory>

#include "ps_fd.h"
#include "ps_list.h"
#include "ps_loop.h"
#include "ps_mapping.h"
#include "ps_proxy_protocol.h"
#include "ps_store.h"

namespace ps {

class WorkerContext;

// TCP_NODELAY and the mapping's keep-alive on a socket. Set once on a listening socket,
// they are inherited by every socket accept() returns (the kernel clones the listener:
// measured on Linux 6.18 for TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and
// TCP_KEEPCNT, and the child's keep-alive timer is armed at the handshake), so the
// accepted side of a connection costs no system call for them.
// Returns 0 or a negative errno.
int set_tcp_options(int fd, const MappingConfig& config);

class TcpSession final : public EventHandler {
 public:
  // `idle`: the worker's list of this mapping's open sessions by last activity, when the
  // mapping has an idle timeout (else nullptr).
  TcpSession(WorkerContext* worker, Mapping* mapping, UniqueFd client, List<TcpSession>* idle);

  // Opens the target socket and starts connecting. On failure the session has already
  // closed itself (the client is reset and the failure counted), and the negative errno
  // is returned so that the caller can react to fd exhaustion.
  int start();

  void on_event(Watcher* watcher, uint32_t events) override;

  // Gives up connecting: the connect timeout has passed.
  void on_connect_timeout();

  // Resets both sides now (mapping removed, engine stopping).
  void abort() { finish(true); }

  // Resets both sides: no byte has moved either way for the mapping's idle timeout.
  void on_idle_timeout();

  // When the idle timeout runs out, if no byte moves before.
  int64_t idle_deadline() const { return last_active_ms_ + mapping_->config().idle_timeout_ms; }

  Mapping* mapping() const { return mapping_; }
  int64_t connect_deadline() const { return connect_deadline_; }

  // Moving a connected session to another worker, between batches of events: detach()
  // on the old worker's thread leaves its loop and its pipe count; attach() on the new
  // worker's thread joins its loop (level triggered, so nothing waiting is missed) and
  // counts on its line. The caller moves the session between the workers' lists.
  bool movable() const { return state_ == State::kOpen; }
  void detach();
  void attach(WorkerContext* worker, List<TcpSession>* idle);

  uint32_t activity = 0;  // Events since the worker last sampled its load.

  ListLink<TcpSession> all_link{this};         // In the worker's list of sessions.
  ListLink<TcpSession> connecting_link{this};  // In the worker's list of pending connects.
  ListLink<TcpSession> idle_link{this};        // In idle_, least recently active first.

 private:
  // kSendingHeader: connected, and the PROXY protocol header is not all sent yet (the target's
  // send buffer was full); no client byte moves until it is.
  // kAwaitHeader: reading the client's PROXY header (acceptProxyProtocol), before connecting.
  enum class State { kAwaitHeader, kConnecting, kSendingHeader, kOpen, kClosed };

  // While kAwaitHeader and until the header onwards is sent: what the client's header said,
  // and the bytes of it read so far.
  struct Received {
    ReceivedHeader header;
    char data[kAcceptedHeaderMax];
    size_t have = 0;  // Bytes of the header consumed from the socket.
  };
  enum Tag : uint8_t { kClient, kTarget };

  // Bytes in flight from one socket to the other.
  struct Direction {
    Pipe pipe;               // Held while bytes are in the pipe.
    char* buffer = nullptr;  // Or, on the copy path, held while bytes are in the buffer.
    size_t offset = 0;       // Where the unwritten bytes start in the buffer.
    size_t pending = 0;      // Bytes read from the source and not yet written.
    bool eof = false;        // The source has sent FIN.
    bool shut = false;       // FIN has been forwarded with shutdown(SHUT_WR).

    bool has_store() const { return pipe.valid() || buffer != nullptr; }
    bool wants_read() const { return !eof && pending == 0; }
  };

  int pump(Direction& d, int src, int dst, bool can_read, bool can_write, bool toward_target);
  int acquire_store(Direction& d);
  void release_store(Direction& d);
  ssize_t read_in(Direction& d, int src);
  ssize_t write_out(Direction& d, int dst, bool toward_target);
  void update_interest(Watcher* event_watcher, uint32_t events);
  void on_connected();
  int connect();
  void read_client_header();
  bool send_proxy_header();
  bool flush_proxy_header();
  void start_forwarding();
  // Counts the failure under its reason (and reports it when events are on), then resets
  // the client. `error`: a negative errno.
  void fail_connect(int error);
  void finish(bool reset);
  // Bytes moved: the session goes to the back of its idle list, at most once per batch of
  // events (now_ms() changes once per loop iteration), with no allocation and no timer.
  inline void touch();

  WorkerContext* worker_;
  Mapping* mapping_;
  ThreadCounters* counters_;
  UniqueFd client_;
  UniqueFd target_;
  Watcher client_watcher_;
  Watcher target_watcher_;
  Direction up_;    // Client to target.
  Direction down_;  // Target to client.
  State state_ = State::kConnecting;
  bool no_splice_ = false;  // splice(2) said EINVAL: this connection copies.
  int64_t connect_deadline_ = 0;
  // The unsent rest of the PROXY protocol header, only while state_ is kSendingHeader.
  std::unique_ptr<char[]> header_;
  uint8_t header_offset_ = 0;
  uint8_t header_length_ = 0;
  std::unique_ptr<Received> received_;  // Only with acceptProxyProtocol.
  List<TcpSession>* idle_ = nullptr;    // Set while the mapping has an idle timeout.
  int64_t last_active_ms_ = 0;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_TCP_SESSION_H_
