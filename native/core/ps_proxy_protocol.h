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

}  // namespace ps

#endif  // PORTSPLICE_PS_PROXY_PROTOCOL_H_
