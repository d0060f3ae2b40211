// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a mapping
// with `proxyProtocol` sends to the target before any client byte: the client's address
// (getpeername of the accepted socket) and the address it connected to (getsockname).
#ifndef PORTSPLICE_PS_PROXY_PROTOCOL_H_
#define PORTSPLICE_PS_PROXY_PROTOCOL_H_

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

namespace ps {

enum class ProxyProtocol : uint8_t { kOff, kV1, kV2 };

// The longest header built here: v1's worst case is 107 bytes ("PROXY UNKNOWN" with two
// full IPv6 addresses, spec 2.1), v2's longest is 16 + 36 (TCP over IPv6, no TLV).
constexpr size_t kProxyHeaderMax = 108;

// Writes the header for a connection from `source` (the client) to `destination` (the
// address it reached) into `out` (kProxyHeaderMax bytes) and returns its length. Two
// IPv4-mapped IPv6 addresses (an IPv4 client of a dual-stack listener) are sent as IPv4.
// Any other pair that is not both IPv4 or both IPv6 is sent as "PROXY UNKNOWN" (v1) or as
// the PROXY command with AF_UNSPEC and no address (v2): the spec's choice for a family it
// cannot carry. v2's LOCAL command is for connections the proxy makes on its own (health
// checks) and is never sent.
size_t build_proxy_header(ProxyProtocol version, const sockaddr_storage& source, const sockaddr_storage& destination,
                          char* out);

// Reading a header from the client (`acceptProxyProtocol`). The spec's headers fit in the
// smallest TCP segment every host must take (576 - 40 bytes, section 2); a v2 header with
// TLVs past that is refused as oversized rather than buffered.
constexpr size_t kAcceptedHeaderMax = 536;

// What a received header says. `has_addresses` is false for v1 "UNKNOWN", v2 LOCAL, and v2
// families this proxy does not forward (AF_UNSPEC, UDP, AF_UNIX): the spec has the receiver
// use the real connection's endpoints then.
struct ReceivedHeader {
  bool has_addresses = false;
  sockaddr_storage source{};
  sockaddr_storage destination{};
};

// Parses the first `n` bytes a client sent. Returns the header's length when they hold a
// complete valid v1 or v2 header (and fills *out), 0 when they are a valid beginning of one
// and more bytes are needed, -EINVAL when they are not a PROXY header, or -EMSGSIZE when the
// header would be longer than kAcceptedHeaderMax (v2) or has no CRLF within 107 bytes (v1).
int parse_proxy_header(const char* data, size_t n, ReceivedHeader* out);

}  // namespace ps

#endif  // PORTSPLICE_PS_PROXY_PROTOCOL_H_
