// Command-line flags of portsplice-docker-proxy, parsed the way Go's `flag` package
// parses docker-proxy's: dockerd (and people who run docker-proxy by hand) rely on its
// syntax, its defaults and its exit codes.
#ifndef PORTSPLICE_CLI_FLAGS_H_
#define PORTSPLICE_CLI_FLAGS_H_

#include <stdint.h>

#include <string>

namespace ps_cli {

struct Options {
  std::string proto = "tcp";
  std::string host_ip = "0.0.0.0";
  int64_t host_port = -1;
  std::string container_ip = "0.0.0.0";
  int64_t container_port = -1;
  bool use_listen_fd = false;
  bool print_version = false;
};

enum class ParseResult {
  kOk,
  kHelp,   // -h or -help: the usage was asked for; Go exits 0.
  kError,  // A bad flag or value: Go prints the error and the usage, and exits 2.
};

// Parses argv[1..argc) into `options`, which holds the defaults on entry. Parsing stops
// at the first argument that is not a flag, or after "--", as in Go; the remaining
// arguments are ignored, as docker-proxy ignores them. On kError, `error` is set to
// Go's message, e.g. "flag provided but not defined: -foo".
ParseResult parse_flags(int argc, char** argv, Options* options, std::string* error);

// Writes Go's usage text ("Usage of <program>:" and the flag defaults) to stderr.
void print_usage(const char* program);

}  // namespace ps_cli

#endif  // PORTSPLICE_CLI_FLAGS_H_
