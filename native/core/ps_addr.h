// Socket addresses: parsing of numeric IPv4/IPv6 literals into sockaddr_storage.
#ifndef PORTSPLICE_PS_ADDR_H_
#define PORTSPLICE_PS_ADDR_H_

#include <stdint.h>
#include <sys/socket.h>

namespace ps {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
  uint16_t port() const;
};

// Parses a numeric IPv4 or IPv6 address (no host names) and a port.
// Returns 0, or -EINVAL when `host` is not an address literal.
int parse_address(const char* host, uint16_t port, SocketAddress* out);

}  // namespace ps

#endif  // PORTSPLICE_PS_ADDR_H_
