#!/usr/bin/env bash
# Builds portsplice with sanitizers and runs what exercises the engine most under them.
#
#   scripts/sanitize.sh [asan|tsan]...     (no argument: both)
#
# asan: AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), with cmake-js into
#   build-asan/: the addon, portsplice-docker-proxy and portsplice-stress. Runs
#   - portsplice-stress (native/test/stress.cc: the engine driven from several threads,
#     with a thread that keeps forking),
#   - test/docker-proxy.test.mjs and test/moby-docker-proxy.test.mjs against build-asan/portsplice-docker-proxy
#     (PORTSPLICE_DOCKER_PROXY),
#   - the integration tests that drive the engine hardest, splice engine only, in a node
#     that loads build-asan/Release/portsplice.node (PORTSPLICE_ADDON) with the ASan and
#     UBSan runtimes preloaded (node itself is not instrumented, so they must come first).
# tsan: ThreadSanitizer, with plain cmake into build-tsan/ (no addon: node is not
#   instrumented, and a TSan library loaded into it reports nothing useful). Runs
#   portsplice-stress and the docker-proxy tests against the TSan binary.
#
# Every sanitizer stops the process at its first report (halt_on_error) and writes it to a
# file; the script fails if any report was written, also by a child process whose exit
# status a test does not look at. Leaks are checked everywhere, node included: Node 20
# frees what it allocates, or keeps it reachable, by the time it exits, so no suppression
# is needed; PORTSPLICE_SANITIZE_NODE_LEAKS=0 turns leak checking off for node only, should
# another Node version leak at exit by itself.
#
# Environment: STRESS_SECONDS (default 10), SANITIZE_REPORTS (directory for the reports;
# default a new temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."

passes=("$@")
[ ${#passes[@]} -gt 0 ] || passes=(asan tsan)
for pass in "${passes[@]}"; do
  case "$pass" in
    asan | tsan) ;;
    *)
      echo "usage: scripts/sanitize.sh [asan|tsan]..." >&2
      exit 2
      ;;
  esac
done

stress_seconds=${STRESS_SECONDS:-10}
if [ -n "${SANITIZE_REPORTS:-}" ]; then
  work=$SANITIZE_REPORTS
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/portsplice-sanitize.XXXXXX")
fi
reports=$work/reports # The sanitizers' reports; build logs go next to it.
mkdir -p "$reports"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

log() { echo "sanitize: $*"; }

# Fails, printing them, if the sanitizers wrote any report since the last call.
check_reports() {
  local found
  found=$(find "$reports" -type f | sort)
  if [ -n "$found" ]; then
    for file in $found; do
      echo "---- $file" >&2
      cat "$file" >&2
    done
    log "FAILED: sanitizer reports after $1 (kept in $reports)" >&2
    exit 1
  fi
}

# The shared runtime a sanitizer needs preloaded into an uninstrumented program.
runtime() {
  local path
  path=$(${CXX:-g++} -print-file-name="$1")
  if [ ! -e "$path" ]; then
    log "$1 not found: install g++ (Debian's libgcc-12-dev pulls in libasan8, libubsan1, libtsan2)" >&2
    exit 1
  fi
  echo "$path"
}

if [ ! -f dist/index.js ]; then
  log "compiling the TypeScript (dist/ is missing)"
  npx tsc -p tsconfig.json
fi

for pass in "${passes[@]}"; do
  start=$SECONDS
  if [ "$pass" = asan ]; then
    log "asan: building build-asan (address,undefined)"
    npx cmake-js compile --out build-asan --CDPORTSPLICE_SANITIZE=address,undefined >"$work/build-asan.log" 2>&1 ||
      {
        cat "$work/build-asan.log" >&2
        exit 1
      }
    asan_options="halt_on_error=1:detect_leaks=1:log_path=$reports/asan"
    ubsan_options="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"

    log "asan: portsplice-stress --seconds $stress_seconds --fork"
    ASAN_OPTIONS=$asan_options UBSAN_OPTIONS=$ubsan_options \
      build-asan/portsplice-stress --seconds "$stress_seconds" --fork
    check_reports portsplice-stress

    log "asan: test/docker-proxy.test.mjs, test/moby-docker-proxy.test.mjs against build-asan/portsplice-docker-proxy"
    ASAN_OPTIONS=$asan_options UBSAN_OPTIONS=$ubsan_options \
      PORTSPLICE_DOCKER_PROXY=build-asan/portsplice-docker-proxy \
      node --test --test-concurrency=1 --test-reporter=dot test/docker-proxy.test.mjs test/moby-docker-proxy.test.mjs
    check_reports "the docker-proxy tests"

    node_leaks=1
    [ "${PORTSPLICE_SANITIZE_NODE_LEAKS:-1}" = 0 ] && node_leaks=0
    log "asan: integration tests, splice engine, build-asan/Release/portsplice.node in node (detect_leaks=$node_leaks)"
    LD_PRELOAD="$(runtime libasan.so):$(runtime libubsan.so)" \
      ASAN_OPTIONS="${asan_options/detect_leaks=1/detect_leaks=$node_leaks}" UBSAN_OPTIONS=$ubsan_options \
      PORTSPLICE_ADDON=build-asan/Release/portsplice.node \
      node --test --test-concurrency=1 --test-timeout=300000 --test-reporter=dot --test-name-pattern='\[splice\]' \
      test/forwarding.test.mjs test/lifecycle.test.mjs test/udp.test.mjs test/udp-burst.test.mjs \
      test/drain.test.mjs test/process.test.mjs test/proxy-protocol.test.mjs test/max-connections.test.mjs \
      test/idle-timeout.test.mjs
    check_reports "the integration tests"
  else
    log "tsan: building build-tsan (thread)"
    {
      cmake -S . -B build-tsan "${generator[@]}" -DPORTSPLICE_SANITIZE=thread &&
        cmake --build build-tsan --target portsplice-stress portsplice-docker-proxy
    } >"$work/build-tsan.log" 2>&1 || {
      cat "$work/build-tsan.log" >&2
      exit 1
    }
    tsan_options="halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan"

    log "tsan: portsplice-stress --seconds $stress_seconds --fork"
    TSAN_OPTIONS=$tsan_options build-tsan/portsplice-stress --seconds "$stress_seconds" --fork
    check_reports portsplice-stress

    # Workers added under load and sessions handed over between them.
    log "tsan: portsplice-stress --seconds $stress_seconds --threads auto"
    TSAN_OPTIONS=$tsan_options build-tsan/portsplice-stress --seconds "$stress_seconds" --threads auto
    check_reports "portsplice-stress --threads auto"

    log "tsan: test/docker-proxy.test.mjs, test/moby-docker-proxy.test.mjs against build-tsan/portsplice-docker-proxy"
    TSAN_OPTIONS=$tsan_options PORTSPLICE_DOCKER_PROXY=build-tsan/portsplice-docker-proxy \
      node --test --test-concurrency=1 --test-reporter=dot test/docker-proxy.test.mjs test/moby-docker-proxy.test.mjs
    check_reports "the docker-proxy tests"
  fi
  log "$pass: passed in $((SECONDS - start)) s"
done
[ -n "${SANITIZE_REPORTS:-}" ] || rm -rf "$work"
