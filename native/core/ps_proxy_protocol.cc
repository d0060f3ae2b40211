#include "ps_proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

namespace ps {

namespace {

// v2's signature (spec 2.2), which contains a NUL byte: never handled as a string.
constexpr uint8_t kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr uint8_t kV2Proxy = 0x21;  // Version 2, command PROXY.
constexpr uint8_t kV2Tcp4 = 0x11;   // AF_INET, STREAM.
constexpr uint8_t kV2Tcp6 = 0x21;   // AF_INET6, STREAM.
constexpr uint8_t kV2Unspec = 0x00;

// One end of the connection, IPv4-mapped addresses unmapped when both ends are.
struct End {
  int family = AF_UNSPEC;
  uint8_t address[16] = {};  // 4 bytes for AF_INET, 16 for AF_INET6, network order.
  uint16_t port = 0;         // Network order.
};

End end_of(const sockaddr_storage& s) {
  End end;
  if (s.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&s);
    end.family = AF_INET;
    memcpy(end.address, &v4->sin_addr, 4);
    end.port = v4->sin_port;
  } else if (s.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&s);
    end.family = AF_INET6;
    memcpy(end.address, &v6->sin6_addr, 16);
    end.port = v6->sin6_port;
  }
  return end;
}

bool is_v4_mapped(const End& end) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  return end.family == AF_INET6 && memcmp(end.address, kPrefix, sizeof kPrefix) == 0;
}

void unmap(End* end) {
  memmove(end->address, end->address + 12, 4);
  end->family = AF_INET;
}

}  // namespace

size_t build_proxy_header(ProxyProtocol version, const sockaddr_storage& source, const sockaddr_storage& destination,
                          char* out) {
  End src = end_of(source);
  End dst = end_of(destination);
  // A dual-stack [::] listener sees an IPv4 client as ::ffff:a.b.c.d on both ends; the
  // receiver must see the IPv4 connection it really is ("TCP4" / AF_INET).
  if (is_v4_mapped(src) && is_v4_mapped(dst)) {
    unmap(&src);
    unmap(&dst);
  }
  bool known = src.family == dst.family && (src.family == AF_INET || src.family == AF_INET6);
  if (version == ProxyProtocol::kV1) {
    if (!known) {
      static constexpr char kUnknown[] = "PROXY UNKNOWN\r\n";
      memcpy(out, kUnknown, sizeof kUnknown - 1);
      return sizeof kUnknown - 1;
    }
    char src_text[INET6_ADDRSTRLEN];
    char dst_text[INET6_ADDRSTRLEN];
    inet_ntop(src.family, src.address, src_text, sizeof src_text);
    inet_ntop(dst.family, dst.address, dst_text, sizeof dst_text);
    // inet_ntop writes the forms the spec asks for: dotted decimal without leading zeroes,
    // and IPv6 with one "::" for the longest run of zero groups (RFC 5952).
    int n = snprintf(out, kProxyHeaderMax, "PROXY %s %s %s %u %u\r\n", src.family == AF_INET ? "TCP4" : "TCP6",
                     src_text, dst_text, ntohs(src.port), ntohs(dst.port));
    return n > 0 ? static_cast<size_t>(n) : 0;  // At most 104 bytes: it always fits.
  }
  auto* p = reinterpret_cast<uint8_t*>(out);
  memcpy(p, kV2Signature, sizeof kV2Signature);
  p[12] = kV2Proxy;
  size_t address_bytes = !known ? 0 : src.family == AF_INET ? 4 : 16;
  p[13] = !known ? kV2Unspec : src.family == AF_INET ? kV2Tcp4 : kV2Tcp6;
  uint16_t length = static_cast<uint16_t>(known ? 2 * address_bytes + 4 : 0);
  p[14] = static_cast<uint8_t>(length >> 8);
  p[15] = static_cast<uint8_t>(length & 0xFF);
  uint8_t* at = p + 16;
  if (known) {
    // Source address, destination address, source port, destination port (spec 2.2).
    memcpy(at, src.address, address_bytes);
    memcpy(at + address_bytes, dst.address, address_bytes);
    memcpy(at + 2 * address_bytes, &src.port, 2);
    memcpy(at + 2 * address_bytes + 2, &dst.port, 2);
  }
  return 16 + length;
}

}  // namespace ps
