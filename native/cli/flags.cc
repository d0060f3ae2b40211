#include "flags.h"

#include <stdio.h>
#include <string.h>

namespace ps_cli {
namespace {

enum class Kind { kString, kInt, kBool };

struct FlagSpec {
  const char* name;
  Kind kind;
};

// The flags docker-proxy defines, in the order Go prints them (sorted by name).
const FlagSpec kFlags[] = {
    {"container-ip", Kind::kString},
    {"container-port", Kind::kInt},
    {"host-ip", Kind::kString},
    {"host-port", Kind::kInt},
    {"proto", Kind::kString},
    {"use-listen-fd", Kind::kBool},
    {"v", Kind::kBool},
    {"version", Kind::kBool},
};

const FlagSpec* find_flag(const std::string& name) {
  for (const FlagSpec& spec : kFlags) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

// Go's %q, closely enough for error messages: the value between double quotes, with
// quotes, backslashes and control characters escaped.
std::string quote(const std::string& value) {
  std::string out = "\"";
  for (unsigned char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

// strconv.ParseBool, as flag's boolean values use it.
bool parse_bool(const std::string& s, bool* out) {
  static const char* const kTrue[] = {"1", "t", "T", "TRUE", "true", "True"};
  static const char* const kFalse[] = {"0", "f", "F", "FALSE", "false", "False"};
  for (const char* word : kTrue) {
    if (s == word) {
      *out = true;
      return true;
    }
  }
  for (const char* word : kFalse) {
    if (s == word) {
      *out = false;
      return true;
    }
  }
  return false;
}

char lower(char c) {
  return static_cast<char>(c | 0x20);
}

// strconv's underscoreOK: with base prefix detection, underscores may only separate
// digits ("1_000", "0x_ff"), never lead, trail or double up.
bool underscores_ok(const std::string& text) {
  const char* s = text.c_str();
  if (*s == '+' || *s == '-') s++;
  char saw = '^';
  bool hex = false;
  if (s[0] == '0' && (lower(s[1]) == 'b' || lower(s[1]) == 'o' || lower(s[1]) == 'x')) {
    hex = lower(s[1]) == 'x';
    saw = '0';
    s += 2;
  }
  for (; *s != '\0'; s++) {
    if ((*s >= '0' && *s <= '9') || (hex && lower(*s) >= 'a' && lower(*s) <= 'f')) {
      saw = '0';
    } else if (*s == '_') {
      if (saw != '0') return false;
      saw = '_';
    } else {
      if (saw == '_') return false;
      saw = '!';
    }
  }
  return saw != '_';
}

// strconv.ParseInt(s, 0, 64), which flag's int values use: an optional sign, then
// decimal, or octal with a leading 0 or 0o, hex with 0x, binary with 0b, and
// underscores between digits. Returns nullptr, or flag's "parse error" or
// "value out of range".
const char* parse_int(const std::string& text, int64_t* out) {
  static const char kParse[] = "parse error";
  static const char kRange[] = "value out of range";
  const char* s = text.c_str();
  bool negative = false;
  if (*s == '+' || *s == '-') negative = *s++ == '-';
  if (*s == '\0') return kParse;
  unsigned base = 10;
  if (s[0] == '0') {
    size_t rest = strlen(s);
    char prefix = rest >= 3 ? lower(s[1]) : '\0';
    if (prefix == 'b') {
      base = 2;
    } else if (prefix == 'o') {
      base = 8;
    } else if (prefix == 'x') {
      base = 16;
    } else {
      base = 8;  // A plain leading zero means octal, and is itself a digit.
    }
    s += base == 8 && prefix != 'o' ? 1 : 2;
  }
  uint64_t value = 0;
  bool underscores = false;
  for (; *s != '\0'; s++) {
    unsigned digit;
    char c = *s;
    if (c == '_') {
      underscores = true;
      continue;
    } else if (c >= '0' && c <= '9') {
      digit = static_cast<unsigned>(c - '0');
    } else if (lower(c) >= 'a' && lower(c) <= 'z') {
      digit = static_cast<unsigned>(lower(c) - 'a' + 10);
    } else {
      return kParse;
    }
    if (digit >= base) return kParse;
    if (value > (UINT64_MAX - digit) / base) return kRange;
    value = value * base + digit;
  }
  if (underscores && !underscores_ok(text)) return kParse;
  const uint64_t limit = uint64_t{1} << 63;
  if (negative ? value > limit : value >= limit) return kRange;
  *out = negative ? static_cast<int64_t>(0 - value) : static_cast<int64_t>(value);
  return nullptr;
}

// Stores one flag's value. Returns false with `error` set, in Go's words.
bool set_flag(const FlagSpec& spec, const std::string& name, bool has_value, const std::string& value, Options* options,
              std::string* error) {
  if (spec.kind == Kind::kBool) {
    bool on = true;
    if (has_value && !parse_bool(value, &on)) {
      *error = "invalid boolean value " + quote(value) + " for -" + name + ": parse error";
      return false;
    }
    if (name == "use-listen-fd") {
      options->use_listen_fd = on;
    } else {
      options->print_version = on;
    }
    return true;
  }
  if (spec.kind == Kind::kInt) {
    int64_t number = 0;
    if (const char* problem = parse_int(value, &number)) {
      *error = "invalid value " + quote(value) + " for flag -" + name + ": " + problem;
      return false;
    }
    (name == "host-port" ? options->host_port : options->container_port) = number;
    return true;
  }
  // Addresses are checked later, so that a bad one is reported through the status
  // pipe like any other failure to start, where dockerd shows it to the user.
  if (name == "proto") {
    options->proto = value;
  } else if (name == "host-ip") {
    options->host_ip = value;
  } else {
    options->container_ip = value;
  }
  return true;
}

}  // namespace

ParseResult parse_flags(int argc, char** argv, Options* options, std::string* error) {
  int i = 1;
  while (i < argc) {
    std::string arg = argv[i];
    // A lone "-", or anything not starting with "-", ends the flags.
    if (arg.size() < 2 || arg[0] != '-') break;
    size_t minuses = 1;
    if (arg[1] == '-') {
      minuses = 2;
      if (arg.size() == 2) break;  // "--" ends the flags.
    }
    std::string name = arg.substr(minuses);
    if (name.empty() || name[0] == '-' || name[0] == '=') {
      *error = "bad flag syntax: " + arg;
      return ParseResult::kError;
    }
    i++;
    bool has_value = false;
    std::string value;
    size_t equals = name.find('=', 1);
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name.resize(equals);
      has_value = true;
    }
    const FlagSpec* spec = find_flag(name);
    if (spec == nullptr) {
      if (name == "h" || name == "help") return ParseResult::kHelp;
      *error = "flag provided but not defined: -" + name;
      return ParseResult::kError;
    }
    // Only non-boolean flags take the next argument as their value.
    if (spec->kind != Kind::kBool && !has_value && i < argc) {
      value = argv[i++];
      has_value = true;
    }
    if (spec->kind != Kind::kBool && !has_value) {
      *error = "flag needs an argument: -" + name;
      return ParseResult::kError;
    }
    if (!set_flag(*spec, name, has_value, value, options, error)) return ParseResult::kError;
  }
  return ParseResult::kOk;
}

void print_usage(const char* program) {
  dprintf(2,
          "Usage of %s:\n"
          "  -container-ip value\n"
          "    \tcontainer ip (default 0.0.0.0)\n"
          "  -container-port int\n"
          "    \tcontainer port (default -1)\n"
          "  -host-ip value\n"
          "    \thost ip (default 0.0.0.0)\n"
          "  -host-port int\n"
          "    \thost port (default -1)\n"
          "  -proto string\n"
          "    \tproxy protocol (default \"tcp\")\n"
          "  -use-listen-fd\n"
          "    \tuse a supplied listen fd\n"
          "  -v\tprint version information and quit\n"
          "  -version\n"
          "    \tprint version information and quit\n",
          program);
}

}  // namespace ps_cli
