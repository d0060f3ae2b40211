// parse_address: IPv4 and IPv6 literals (with scope ids and brackets refused as the caller
// strips them), the port in network order, and -EINVAL for anything that is not a literal.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include <initializer_list>

#include "../core/ps_addr.h"
#include "check.h"

int main() {
  ps::SocketAddress a;
  CHECK_EQ(ps::parse_address("127.0.0.1", 8080, &a), 0);
  CHECK_EQ(a.family(), AF_INET);
  CHECK_EQ(a.length, sizeof(sockaddr_in));
  const auto* v4 = reinterpret_cast<const sockaddr_in*>(a.get());
  CHECK_EQ(ntohs(v4->sin_port), 8080);
  CHECK_EQ(ntohl(v4->sin_addr.s_addr), 0x7f000001);

  CHECK_EQ(ps::parse_address("::1", 443, &a), 0);
  CHECK_EQ(a.family(), AF_INET6);
  CHECK_EQ(a.length, sizeof(sockaddr_in6));
  const auto* v6 = reinterpret_cast<const sockaddr_in6*>(a.get());
  CHECK_EQ(ntohs(v6->sin6_port), 443);
  CHECK(IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr));

  // An IPv4-mapped IPv6 address stays IPv6 (what a dual-stack socket sees).
  CHECK_EQ(ps::parse_address("::ffff:198.18.0.2", 1, &a), 0);
  CHECK_EQ(a.family(), AF_INET6);

  for (const char* bad : {"", "localhost", "1.2.3", "1.2.3.256", "[::1]", "::1%", "300.0.0.1", " 127.0.0.1"}) {
    ps::SocketAddress out;
    int rc = ps::parse_address(bad, 1, &out);
    if (rc == 0) fprintf(stderr, "accepted: \"%s\"\n", bad);
    CHECK(rc < 0);
  }
  return 0;
}
