// parse_flags follows Go's flag package as docker-proxy uses it: -name, --name, -name=value,
// -name value for non-booleans only, strconv.ParseBool's words, strconv.ParseInt(s, 0, 64)
// with base prefixes and underscores, the end of flags at "--" or a non-flag argument, and
// Go's error messages.
#include <string.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "../cli/flags.h"
#include "check.h"

namespace {

struct Parsed {
  ps_cli::ParseResult result;
  ps_cli::Options options;
  std::string error;
};

Parsed parse(std::initializer_list<const char*> args) {
  std::vector<std::string> storage{"docker-proxy"};
  for (const char* a : args) storage.emplace_back(a);
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(&s[0]);
  Parsed p;
  p.result = ps_cli::parse_flags(static_cast<int>(argv.size()), argv.data(), &p.options, &p.error);
  return p;
}

void expect_ok(const Parsed& p) {
  if (p.result != ps_cli::ParseResult::kOk) fprintf(stderr, "unexpected error: %s\n", p.error.c_str());
  CHECK(p.result == ps_cli::ParseResult::kOk);
}

void expect_error(const Parsed& p, const char* message) {
  CHECK(p.result == ps_cli::ParseResult::kError);
  if (p.error != message) fprintf(stderr, "error %s, expected %s\n", p.error.c_str(), message);
  CHECK(p.error == message);
}

int64_t port_of(const char* text) {
  Parsed p = parse({"-host-port", text});
  expect_ok(p);
  return p.options.host_port;
}

}  // namespace

int main() {
  // Defaults, as docker-proxy declares them.
  Parsed p = parse({});
  expect_ok(p);
  CHECK(p.options.proto == "tcp");
  CHECK(p.options.host_ip == "0.0.0.0");
  CHECK_EQ(p.options.host_port, -1);
  CHECK(!p.options.use_listen_fd);

  // One dash or two, a separate value or '='.
  p = parse({"--proto", "udp", "-host-ip=::1", "--host-port=8080", "-container-ip", "198.18.0.2"});
  expect_ok(p);
  CHECK(p.options.proto == "udp");
  CHECK(p.options.host_ip == "::1");
  CHECK_EQ(p.options.host_port, 8080);
  CHECK(p.options.container_ip == "198.18.0.2");

  // Booleans never take the next argument: it ends the flags (and is ignored).
  p = parse({"-use-listen-fd", "false", "-host-port", "1"});
  expect_ok(p);
  CHECK(p.options.use_listen_fd);
  CHECK_EQ(p.options.host_port, -1);
  for (const char* word : {"1", "t", "T", "TRUE", "true", "True"}) {
    std::string arg = std::string("-use-listen-fd=") + word;
    p = parse({arg.c_str()});
    expect_ok(p);
    CHECK(p.options.use_listen_fd);
  }
  for (const char* word : {"0", "f", "F", "FALSE", "false", "False"}) {
    std::string arg = std::string("-use-listen-fd=") + word;
    p = parse({"-use-listen-fd", arg.c_str()});
    expect_ok(p);
    CHECK(!p.options.use_listen_fd);
  }
  expect_error(parse({"-use-listen-fd=tRuE"}), "invalid boolean value \"tRuE\" for -use-listen-fd: parse error");

  // strconv.ParseInt(s, 0, 64): prefixes, a leading zero is octal, underscores between digits.
  CHECK_EQ(port_of("0x1f90"), 8080);
  CHECK_EQ(port_of("0X1F90"), 8080);
  CHECK_EQ(port_of("017620"), 8080);
  CHECK_EQ(port_of("0o17620"), 8080);
  CHECK_EQ(port_of("0b1111110010000"), 8080);
  CHECK_EQ(port_of("8_080"), 8080);
  CHECK_EQ(port_of("0x_1f90"), 8080);
  CHECK_EQ(port_of("+8080"), 8080);
  CHECK_EQ(port_of("-1"), -1);
  CHECK_EQ(port_of("0"), 0);
  CHECK_EQ(port_of("9223372036854775807"), INT64_MAX);
  expect_error(parse({"-host-port", "8_"}), "invalid value \"8_\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "_8"}), "invalid value \"_8\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "8__0"}), "invalid value \"8__0\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "08"}), "invalid value \"08\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "0x"}), "invalid value \"0x\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", ""}), "invalid value \"\" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "80 "}), "invalid value \"80 \" for flag -host-port: parse error");
  expect_error(parse({"-host-port", "9223372036854775808"}),
               "invalid value \"9223372036854775808\" for flag -host-port: value out of range");

  // Unknown flags and a missing value, in Go's words; -h asks for the usage.
  expect_error(parse({"-foo"}), "flag provided but not defined: -foo");
  expect_error(parse({"-host-port"}), "flag needs an argument: -host-port");
  CHECK(parse({"-h"}).result == ps_cli::ParseResult::kHelp);
  CHECK(parse({"--help"}).result == ps_cli::ParseResult::kHelp);

  // "--" or a non-flag argument ends the flags; what follows is ignored.
  p = parse({"-host-port", "1", "--", "-host-port", "2"});
  expect_ok(p);
  CHECK_EQ(p.options.host_port, 1);
  p = parse({"extra", "-host-port", "2"});
  expect_ok(p);
  CHECK_EQ(p.options.host_port, -1);
  // The last occurrence of a flag wins.
  CHECK_EQ(parse({"-host-port", "1", "-host-port", "2"}).options.host_port, 2);
  return 0;
}
