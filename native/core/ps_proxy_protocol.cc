#include "ps_proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
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

namespace {

constexpr size_t kV1Max = 107;  // "PROXY UNKNOWN" with two full IPv6 addresses and CRLF.

// A port as the spec writes it: 1 to 5 decimal digits, no leading zero, at most 65535.
bool parse_port(const char* text, size_t length, uint16_t* out) {
  if (length == 0 || length > 5 || (length > 1 && text[0] == '0')) return false;
  uint32_t value = 0;
  for (size_t i = 0; i < length; i++) {
    if (text[i] < '0' || text[i] > '9') return false;
    value = value * 10 + static_cast<uint32_t>(text[i] - '0');
  }
  if (value > 65535) return false;
  *out = static_cast<uint16_t>(value);
  return true;
}

bool set_address(int family, const void* address, uint16_t port_network_order, sockaddr_storage* out) {
  memset(out, 0, sizeof *out);
  if (family == AF_INET) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(out);
    v4->sin_family = AF_INET;
    memcpy(&v4->sin_addr, address, 4);
    v4->sin_port = port_network_order;
  } else {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
    v6->sin6_family = AF_INET6;
    memcpy(&v6->sin6_addr, address, 16);
    v6->sin6_port = port_network_order;
  }
  return true;
}

// "PROXY TCP4 SRC DST SPORT DPORT" (the CRLF already stripped), section 2.1.
int parse_v1_line(const char* line, size_t length, ReceivedHeader* out) {
  static constexpr char kUnknown[] = "PROXY UNKNOWN";
  if (length >= sizeof kUnknown - 1 && memcmp(line, kUnknown, sizeof kUnknown - 1) == 0 &&
      (length == sizeof kUnknown - 1 || line[sizeof kUnknown - 1] == ' ')) {
    out->has_addresses = false;  // "the receiver must ignore anything presented before the CRLF"
    return 0;
  }
  int family;
  if (length > 11 && memcmp(line, "PROXY TCP4 ", 11) == 0) {
    family = AF_INET;
  } else if (length > 11 && memcmp(line, "PROXY TCP6 ", 11) == 0) {
    family = AF_INET6;
  } else {
    return -EINVAL;
  }
  // Exactly four fields after the protocol, separated by exactly one space.
  const char* fields[4];
  size_t lengths[4];
  size_t at = 11;
  for (int i = 0; i < 4; i++) {
    size_t start = at;
    while (at < length && line[at] != ' ') at++;
    fields[i] = line + start;
    lengths[i] = at - start;
    if (lengths[i] == 0) return -EINVAL;
    if (i < 3) {
      if (at >= length) return -EINVAL;
      at++;  // The space.
    }
  }
  if (at != length) return -EINVAL;
  uint8_t source[16], destination[16];
  char text[INET6_ADDRSTRLEN];
  for (int i = 0; i < 2; i++) {
    if (lengths[i] >= sizeof text) return -EINVAL;
    memcpy(text, fields[i], lengths[i]);
    text[lengths[i]] = '\0';
    // glibc's inet_pton takes exactly the canonical forms the spec allows: four decimal
    // parts without leading zeroes for AF_INET, the RFC 4291 text forms for AF_INET6.
    if (inet_pton(family, text, i == 0 ? source : destination) != 1) return -EINVAL;
  }
  uint16_t source_port, destination_port;
  if (!parse_port(fields[2], lengths[2], &source_port) || !parse_port(fields[3], lengths[3], &destination_port)) {
    return -EINVAL;
  }
  set_address(family, source, htons(source_port), &out->source);
  set_address(family, destination, htons(destination_port), &out->destination);
  out->has_addresses = true;
  return 0;
}

int parse_v1(const char* data, size_t n, ReceivedHeader* out) {
  static constexpr char kPrefix[] = "PROXY ";
  size_t prefix = n < sizeof kPrefix - 1 ? n : sizeof kPrefix - 1;
  if (memcmp(data, kPrefix, prefix) != 0) return -EINVAL;
  size_t limit = n < kV1Max ? n : kV1Max;
  for (size_t i = 0; i < limit; i++) {
    if (data[i] == '\n') return -EINVAL;  // "must not tolerate a single CR or LF"
    if (data[i] != '\r') continue;
    if (i + 1 >= n) return 0;  // The LF is still to come.
    if (data[i + 1] != '\n' || i + 2 > kV1Max) return -EINVAL;
    int rc = parse_v1_line(data, i, out);
    return rc < 0 ? rc : static_cast<int>(i + 2);
  }
  return n >= kV1Max ? -EMSGSIZE : 0;
}

int parse_v2(const uint8_t* p, size_t n, ReceivedHeader* out) {
  size_t signature = n < sizeof kV2Signature ? n : sizeof kV2Signature;
  if (memcmp(p, kV2Signature, signature) != 0) return -EINVAL;
  if (n > 12 && (p[12] >> 4) != 2) return -EINVAL;  // Version 2 only.
  uint8_t command = n > 12 ? p[12] & 0x0F : 0;
  if (command > 1) return -EINVAL;  // LOCAL or PROXY; "other values ... must drop".
  if (n > 13) {
    switch (p[13]) {
      case 0x00:
      case 0x11:
      case 0x12:
      case 0x21:
      case 0x22:
      case 0x31:
      case 0x32:
        break;
      default:
        return -EINVAL;  // "other values are unspecified ... must be rejected"
    }
  }
  if (n < 16) return 0;
  size_t length = 16 + (static_cast<size_t>(p[14]) << 8 | p[15]);
  if (length > kAcceptedHeaderMax) return -EMSGSIZE;
  if (n < length) return 0;
  out->has_addresses = false;
  // TCP over IPv4 or IPv6 with the PROXY command: the addresses. LOCAL, and the families
  // this proxy cannot have been reached by (UNSPEC, UDP, AF_UNIX): the real endpoints, as
  // the spec says a receiver that does not implement them falls back to. TLVs are skipped.
  if (command == 1 && (p[13] == kV2Tcp4 || p[13] == kV2Tcp6)) {
    int family = p[13] == kV2Tcp4 ? AF_INET : AF_INET6;
    size_t bytes = family == AF_INET ? 4 : 16;
    if (length - 16 < 2 * bytes + 4) return -EINVAL;
    const uint8_t* at = p + 16;
    uint16_t source_port, destination_port;
    memcpy(&source_port, at + 2 * bytes, 2);
    memcpy(&destination_port, at + 2 * bytes + 2, 2);
    set_address(family, at, source_port, &out->source);
    set_address(family, at + bytes, destination_port, &out->destination);
    out->has_addresses = true;
  }
  return static_cast<int>(length);
}

}  // namespace

int parse_proxy_header(const char* data, size_t n, ReceivedHeader* out) {
  if (n == 0) return 0;
  // Section 2.2: v2 starts with CR, v1 with "PROXY"; anything else is not this protocol.
  if (static_cast<uint8_t>(data[0]) == kV2Signature[0]) return parse_v2(reinterpret_cast<const uint8_t*>(data), n, out);
  if (data[0] == 'P') return parse_v1(data, n, out);
  return -EINVAL;
}

}  // namespace ps
