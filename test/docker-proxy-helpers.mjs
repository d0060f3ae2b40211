// Helpers for the tests of docker-proxy and its drop-in (docker-proxy.test.mjs,
// moby-docker-proxy.test.mjs): start a proxy as dockerd does, with fd 3 a pipe and optionally
// with the socket dockerd binds for it on fd 4.
//
// Like helpers.mjs, this module only declares functions: `node --test test/` may run it on its
// own as if it were a test file.

import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';

import { V4, withTimeout, freePort, spawnChild } from './helpers.mjs';

export const HAVE_PYTHON = spawnSync('python3', ['-c', 'pass']).status === 0;

/** Every process started here (and every proxy a fake dockerd started), for killAll(). */
const children = new Set();
const proxyPids = new Set();

/** Kill whatever is still running (for a test file's final `after`). */
export function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  for (const pid of proxyPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/**
 * Start `command args` with fd 3 a pipe, as dockerd does (spawnChild of helpers.mjs).
 * Returns { child, exited, status(), stdout, stderr }: `exited` resolves { code, signal };
 * `status()` resolves everything written to fd 3 once the proxy closes it (it does so right
 * after writing), bounded.
 */
export function launch(args, { command, fd3 = true, env } = {}) {
  const child = spawnChild(command, args, { statusPipe: fd3, env });
  children.add(child);
  return {
    child,
    get stdout() {
      return child.out;
    },
    get stderr() {
      return child.err;
    },
    exited: child.exited,
    status: () =>
      withTimeout(child.statusDone, 5000, `status on fd 3 from ${args.join(' ')}`, () =>
        child.kill('SIGKILL'),
      ),
  };
}

/** Wait for a process to exit, bounded; resolves { code, signal }. */
export function exitOf(run, timeout = 5000) {
  return withTimeout(run.exited, timeout, 'proxy exit', () => run.child.kill('SIGKILL'));
}

/** Kill a proxy (and the proxy a dockerd stand-in started) and wait, ignoring errors. */
export async function stop(run) {
  if (!run) return;
  if (run.report?.pid && run.child.exitCode === null && run.child.signalCode === null) {
    try {
      process.kill(run.report.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
  await exitOf(run).catch(() => {});
}

/** docker-proxy's command line, as dockerd builds it. */
export function proxyArgs({ proto = 'tcp', hostIp = V4, hostPort, containerIp = V4, containerPort }) {
  return [
    '-proto',
    proto,
    '-host-ip',
    hostIp,
    '-host-port',
    String(hostPort),
    '-container-ip',
    containerIp,
    '-container-port',
    String(containerPort),
  ];
}

/**
 * Start the proxy at `command` on a free port of `hostIp` (it binds the port itself) and wait
 * for "0\n". A port taken between freePort() and the proxy's bind is retried. Resolves the run
 * with `port` set.
 */
export async function startForwarder({ command, proto = 'tcp', hostIp = V4, env, ...rest }) {
  for (let attempt = 0; ; attempt++) {
    const hostPort = await freePort(hostIp);
    const run = launch(proxyArgs({ proto, hostIp, hostPort, ...rest }), { command, env });
    const status = await run.status();
    if (status === '0\n') return Object.assign(run, { port: hostPort });
    await stop(run);
    if (attempt < 3 && /EADDRINUSE|address already in use/.test(status)) continue;
    throw new Error(`proxy did not start: status ${JSON.stringify(status)}, stderr: ${run.stderr}`);
  }
}

/** A UDP echo server on `host`. */
export async function startUdpEcho(host = V4) {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('message', (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise((resolve) => socket.bind(0, host, resolve));
  return { port: socket.address().port, close: () => new Promise((resolve) => socket.close(resolve)) };
}

/** Send one datagram from `socket` and resolve the first reply { msg, rinfo }, bounded. */
export function udpRoundTrip(socket, port, payload, host = V4) {
  return withTimeout(
    new Promise((resolve) => {
      socket.once('message', (msg, rinfo) => resolve({ msg, rinfo }));
      socket.send(payload, port, host);
    }),
    3000,
    `udp echo via ${host}:${port}`,
  );
}

// A stand-in for dockerd's side of -use-listen-fd, in python3 (node cannot create a socket with
// chosen options and hand it over as fd 4). It makes the socket as moby does
// (daemon/libnetwork/portallocator/osallocator_linux.go bindTCPOrUDP): socket() with
// SOCK_CLOEXEC and blocking, SO_REUSEADDR, the drop-all filter (ret #0), IPV6_V6ONLY,
// IP_PKTINFO/IPV6_RECVPKTINFO, bind, listen(fd, -1); detaches the filter or not; starts the
// proxy with fd 3 a pipe, fd 4 the socket and fds 0-2 /dev/null (Go's exec with ExtraFiles);
// reads the status with one 2-byte read() as dockerd's proxy_linux.go does (then the error
// text until end of file); looks at the socket it shares with the proxy; closes its copy as
// dockerd does; and then waits, passing SIGINT/SIGTERM on to the proxy.
// It prints one JSON line: { status, port, pid, nonblocking, v6only, filterLength, fdFlags }.
const FAKE_DOCKERD = String.raw`
import ctypes, fcntl, json, os, resource, signal, socket, struct, sys

spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
SO_ATTACH_FILTER, SO_DETACH_FILTER, SO_GET_FILTER = 26, 27, 26
IP_PKTINFO, IPV6_RECVPKTINFO = 8, 49
family = socket.AF_INET6 if ':' in spec['host'] else socket.AF_INET
kind = socket.SOCK_STREAM if spec['proto'] == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(family, kind)  # CLOEXEC and blocking, as Go's syscall.Socket leaves it
if spec.get('reuseaddr'):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if spec.get('filter'):
    # struct sock_filter { u16 code; u8 jt, jf; u32 k } = BPF_RET|BPF_K, k = 0: drop all.
    program = ctypes.create_string_buffer(struct.pack('HBBI', 0x06, 0, 0, 0))
    fprog = struct.pack('HP', 1, ctypes.addressof(program))  # struct sock_fprog
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
if spec.get('v6only') is not None:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, spec['v6only'])
if spec.get('pktinfo'):
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
s.bind((spec['host'], spec.get('port', 0)))
# "@PORT@" in the flags: -host-port as dockerd passes it, the port just bound.
spec['args'] = [a.replace('@PORT@', str(s.getsockname()[1])) for a in spec['args']]
if kind == socket.SOCK_STREAM and not spec.get('noListen') and libc.listen(s.fileno(), -1) != 0:  # python would turn -1 into 0
    raise OSError(ctypes.get_errno(), 'listen')
if spec.get('filter') == 'detach':
    s.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)  # Docker 29: just before the proxy starts
if spec.get('nofileSoft'):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec['nofileSoft'], hard))  # systemd's 1024

# Out of the way of fds 3 and 4 before they are set up in the child.
r, w = os.pipe()
w_high = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
s_high = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
os.close(w)
null = '/dev/null'
actions = [(os.POSIX_SPAWN_OPEN, fd, null, os.O_RDWR, 0) for fd in (0, 1, 2)]
actions += [(os.POSIX_SPAWN_DUP2, w_high, 3), (os.POSIX_SPAWN_DUP2, s_high, 4)]
pid = os.posix_spawn(spec['binary'], [spec['binary']] + spec['args'], dict(os.environ, **spec.get('env', {})), file_actions=actions)
os.close(w_high)
os.close(s_high)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda number, frame: os.kill(pid, number))

status = os.read(r, 2)  # dockerd: buf := make([]byte, 2); r.Read(buf)
if status != b'0\n':
    while True:
        more = os.read(r, 4096)
        if not more:
            break
        status += more
os.close(r)
fd_flags = None
try:
    with open('/proc/%d/fdinfo/4' % pid) as info:
        fd_flags = int([l for l in info if l.startswith('flags:')][0].split()[1], 8)
except (OSError, IndexError):
    pass
report = {
    'status': status.decode('utf-8', 'replace'),
    'port': s.getsockname()[1],
    'pid': pid,
    'nonblocking': bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
    'v6only': s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) if family == socket.AF_INET6 else None,
    # SO_GET_FILTER reports a length in instructions, not bytes, and python returns that many
    # bytes: the length of the answer is the filter's (0 without one).
    'filterLength': len(s.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 64)),
    'fdFlags': fd_flags,
}
s.close()  # dockerd closes its copy once the proxy has started
sys.stdout.write(json.dumps(report) + '\n')
sys.stdout.flush()
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])  # python retries EINTR itself
sys.exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says
`;

/**
 * Run the proxy at `binary` as dockerd 28+ runs it with -use-listen-fd, through the python
 * stand-in above. `socket`: { proto, host, port?, reuseaddr?, v6only?, pktinfo?, filter?:
 * 'detach' (Docker 29: attached, then detached before the proxy starts) | 'leave' (attached,
 * left for the proxy), noListen? (TCP bound only), nofileSoft? }. `args` are the proxy's flags (-use-listen-fd is added; "@PORT@" becomes the bound port).
 * Resolves the run with `report` (the stand-in's JSON line: status, port, pid, nonblocking,
 * v6only, filterLength, fdFlags) and `port`. SIGINT/SIGTERM to `run.child` reach the proxy.
 */
export async function launchLikeDockerd(binary, { socket, args, env }) {
  const spec = { binary, args: [...args, '-use-listen-fd'], env, ...socket };
  const run = launch(['-c', FAKE_DOCKERD, JSON.stringify(spec)], { command: 'python3', fd3: false });
  let line;
  try {
    line = await withTimeout(
      new Promise((resolve, reject) => {
        const check = () => {
          const end = run.stdout.indexOf('\n');
          if (end >= 0) resolve(run.stdout.slice(0, end));
        };
        run.child.stdout.on('data', check);
        run.exited.then(() => reject(new Error(`the dockerd stand-in exited: ${run.stderr}`)));
      }),
      10000,
      'the dockerd stand-in starting the proxy',
    );
  } catch (err) {
    await stop(run);
    throw err;
  }
  const report = JSON.parse(line);
  proxyPids.add(report.pid);
  return Object.assign(run, { report, port: report.port });
}
