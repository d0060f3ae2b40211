// UDP forwarding for one mapping, on the one worker that owns it. Each client address
// gets a flow: a socket connected to the target, so that only replies from exactly
// target:port are accepted. Datagrams move in batches with recvmmsg/sendmmsg, and
// replies leave from the address the client sent to (IP_PKTINFO / IPV6_PKTINFO).
#ifndef PORTSPLICE_PS_UDP_H_
#define PORTSPLICE_PS_UDP_H_

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include <memory>
#include <unordered_map>

#include "ps_addr.h"
#include "ps_fd.h"
#include "ps_list.h"
#include "ps_loop.h"
#include "ps_mapping.h"

namespace ps {

class WorkerContext;

// Scratch space for one batch of datagrams, shared by every UDP mapping of a worker.
struct UdpBatch {
  static constexpr int kMessages = 32;
  // Larger than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6), so that
  // nothing is ever truncated.
  static constexpr size_t kDatagramSize = 65536;
  // Room for both IPV6_PKTINFO and IP_PKTINFO, which a dual-stack socket attaches to
  // every IPv4 datagram.
  static constexpr size_t kControlSize = 128;

  // Returns nullptr when memory is exhausted.
  static std::unique_ptr<UdpBatch> create();

  std::unique_ptr<char[]> data;  // kMessages datagrams of kDatagramSize bytes.
  mmsghdr in[kMessages];
  mmsghdr out[kMessages];
  iovec in_iov[kMessages];
  iovec out_iov[kMessages];
  sockaddr_storage names[kMessages];
  alignas(cmsghdr) char in_control[kMessages][kControlSize];
  alignas(cmsghdr) char out_control[kMessages][kControlSize];
};

// Where a datagram was sent to, as the kernel reported it.
struct LocalAddress {
  int level = 0;  // IPPROTO_IP or IPPROTO_IPV6, or 0 when unknown.
  in_pktinfo v4{};
  in6_pktinfo v6{};
};

class UdpForwarder final : public EventHandler {
 public:
  UdpForwarder(WorkerContext* worker, std::shared_ptr<Mapping> mapping);
  ~UdpForwarder() override;

  // Starts reading the listening socket. Returns 0 or a negative errno.
  int start();
  // Stops reading and closes every flow.
  void stop();

  const std::shared_ptr<Mapping>& mapping() const { return mapping_; }

  // Closes flows that have carried no datagram, in either direction, for the timeout.
  // Returns the time of the next expiry, or INT64_MAX when there are no flows.
  int64_t expire(int64_t now_ms);

  void on_event(Watcher* watcher, uint32_t events) override;

 private:
  struct FlowKey {
    uint64_t high = 0;
    uint64_t low = 0;
    uint32_t port_and_family = 0;
    bool operator==(const FlowKey& o) const {
      return high == o.high && low == o.low && port_and_family == o.port_and_family;
    }
  };
  struct FlowKeyHash {
    size_t operator()(const FlowKey& k) const {
      uint64_t h = k.high * 0x9E3779B97F4A7C15ull ^ k.low;
      h ^= (h >> 29) ^ (static_cast<uint64_t>(k.port_and_family) * 0xBF58476D1CE4E5B9ull);
      return static_cast<size_t>(h ^ (h >> 32));
    }
  };

  struct Flow final : EventHandler {
    explicit Flow(UdpForwarder* forwarder) : owner(forwarder) {}
    void on_event(Watcher*, uint32_t) override {
      if (!closed) owner->forward_replies(this);
    }

    UdpForwarder* owner;
    FlowKey key;
    UniqueFd fd;
    Watcher watcher;
    SocketAddress client;
    LocalAddress local;
    int64_t last_active_ms = 0;
    bool closed = false;
    ListLink<Flow> lru{this};  // Least recently active first.
  };

  static FlowKey key_of(const sockaddr_storage& address);
  Flow* find_or_create(const sockaddr_storage& client, socklen_t length, const LocalAddress& local);
  void close_flow(Flow* flow, Counter* reason);
  // Marks a flow active now, whichever way its datagrams went: last in the LRU list.
  void touch(Flow* flow);
  void forward_requests();
  void forward_replies(Flow* flow);
  // How many of `datagrams` can go out as one UDP GSO message (1: no offload).
  int gso_run(const iovec* datagrams, int count) const;
  // Sends `count` datagrams: to the connected target when `to` is null, else to `to`
  // from the source address `from`. Counts what was sent and what was dropped.
  void send_batch(int fd, iovec* datagrams, int count, const SocketAddress* to, const LocalAddress* from);
  // Sends the datagrams of a GSO message the path refused one at a time, with the same
  // destination and the first `source_control` bytes of its control data (the source
  // address, without UDP_SEGMENT).
  void send_singly(int fd, const msghdr& message, size_t source_control, bool toward_target);
  // Counts a datagram that could not be sent, by errno.
  void count_drop(int error);

  // UDP GSO: at most 64 segments (UDP_MAX_SEGMENTS) and one IP packet's worth of bytes,
  // and segments that fit a 1,500-byte MTU, so that no path refuses them.
  static constexpr int kMaxGsoSegments = 64;
  static constexpr size_t kMaxGsoBytes = 65000;
  static constexpr size_t kMaxGsoSegment = 1452;

  WorkerContext* worker_;
  std::shared_ptr<Mapping> mapping_;
  ThreadCounters* counters_;
  Watcher listen_watcher_;
  bool gso_ = true;  // Cleared when the kernel refuses UDP GSO.
  std::unordered_map<FlowKey, Flow*, FlowKeyHash> flows_;
  List<Flow> lru_;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_UDP_H_
