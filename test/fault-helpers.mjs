// Helpers for the fault, limit and bad-input tests: child processes that run a proxy, a target
// or a client (so that they can be killed, limited with `ulimit -n`, and measured through
// /proc), a deterministic byte pattern to check long streams with, and /proc readers.
//
// Like helpers.mjs this module only declares things: importing it has no side effects (the
// set of children is empty until a test spawns one). Every child is tracked; call
// `killChildren()` in an `after` hook.

import { execFileSync } from 'node:child_process';
import { readFileSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

import { DIST_URL, V4, withTimeout, waitFor, freePort, spawnChild, spawnNode } from './helpers.mjs';

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on every Linux platform). */
const CLK_TCK = 100;

/** The CLI's entry point. */
export const CLI_PATH = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/** CPU time (user + system, all threads) a process has used so far, in seconds. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces: count fields after its closing ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Resident memory of a process, in bytes (VmRSS). */
export function rssBytes(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)[1]) * 1024;
}

/** Descriptors a process has open. */
export function fdCount(pid = process.pid) {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** What the open descriptors of a process are, counted by kind ('socket', 'pipe', 'anon_inode', ...). */
export function fdKinds(pid = process.pid) {
  const kinds = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile (the readdir descriptor itself, for one)
    }
    const kind = /^([a-z_]+):/.exec(target)?.[1] ?? 'file';
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return kinds;
}

/** The set of socket inodes a process holds (to tell whether a call opened a socket). */
export function socketInodes(pid = process.pid) {
  const inodes = new Set();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      /* closed meanwhile */
    }
  }
  return inodes;
}

/** Threads of a process. */
export function threadCount(pid = process.pid) {
  return readdirSync(`/proc/${pid}/task`).length;
}

/** The hard limit on open files of this process. */
export function hardFdLimit(pid = process.pid) {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const hard = line.trim().split(/\s+/)[4];
  return hard === 'unlimited' ? Infinity : Number(hard);
}

/** CPU seconds `pid` uses during the next `ms` milliseconds. */
export async function cpuOver(pid, ms) {
  const before = cpuSeconds(pid);
  await new Promise((resolve) => setTimeout(resolve, ms));
  return cpuSeconds(pid) - before;
}

// ---------------------------------------------------------------------------------------------
// A deterministic byte pattern
// ---------------------------------------------------------------------------------------------

/**
 * The source of `patternBase`, to be embedded in child scripts: `len` pseudo-random bytes
 * from a linear congruential generator seeded with `seed`. A stream made of this block
 * repeated has, at offset p, the byte base[p % len]: with an odd length, any loss,
 * duplication or reordering of a segment shows up as a mismatch.
 */
export const PATTERN_SOURCE = `function patternBase(len, seed) {
  const b = Buffer.allocUnsafe(len);
  let x = seed >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}`;

/** See PATTERN_SOURCE. */
export function patternBase(len, seed) {
  const b = Buffer.allocUnsafe(len);
  let x = seed >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/**
 * Checks that what arrives is the pattern `base` repeated, from offset 0. `bytes` counts
 * what arrived; `mismatch` is the offset of the first wrong byte (or -1).
 */
export class PatternChecker {
  constructor(base) {
    this.base = base;
    this.bytes = 0;
    this.mismatch = -1;
  }

  update(chunk) {
    if (this.mismatch >= 0) {
      this.bytes += chunk.length;
      return;
    }
    const { base } = this;
    let done = 0;
    while (done < chunk.length) {
      const at = (this.bytes + done) % base.length;
      const n = Math.min(base.length - at, chunk.length - done);
      if (chunk.compare(base, at, at + n, done, done + n) !== 0) {
        for (let i = 0; i < n; i++) {
          if (chunk[done + i] !== base[at + i]) {
            this.mismatch = this.bytes + done + i;
            break;
          }
        }
        break;
      }
      done += n;
    }
    this.bytes += chunk.length;
  }

  get ok() {
    return this.mismatch < 0;
  }

  describe() {
    return this.ok ? `${this.bytes} bytes, all as sent` : `first wrong byte at offset ${this.mismatch}`;
  }
}

/**
 * Writes `base` to `socket` `count` times, each write only after the previous one was taken
 * (backpressure honoured, so at most one block waits in user space). `progress.accepted`
 * counts the bytes the kernel has taken (write callbacks), `progress.done` turns true at the end.
 * With `end`, the socket is ended after the last block. Resolves when everything was accepted;
 * stops quietly when the socket fails.
 */
export function pushPattern(socket, base, count, { end = false } = {}) {
  const progress = { accepted: 0, done: false, error: undefined };
  progress.finished = (async () => {
    for (let i = 0; i < count; i++) {
      if (socket.destroyed) return;
      const ok = socket.write(base, (err) => {
        if (err) progress.error ??= err;
        else progress.accepted += base.length;
      });
      if (!ok) {
        await new Promise((resolve) => {
          const done = () => {
            socket.off('drain', done);
            socket.off('close', done);
            resolve();
          };
          socket.on('drain', done);
          socket.on('close', done);
        });
      }
    }
    if (end && !socket.destroyed) socket.end();
    await new Promise((resolve) =>
      socket.writableFinished || socket.destroyed
        ? resolve()
        : socket.once('finish', resolve).once('close', resolve),
    );
    progress.done = true;
  })();
  return progress;
}

// ---------------------------------------------------------------------------------------------
// Reading a socket with read(2), to tell a reset from a FIN
// ---------------------------------------------------------------------------------------------

/**
 * Node cannot always tell a reset from a FIN: when a RST arrives while data is still queued,
 * libuv reads the data and, seeing POLLHUP after a partial read, reports EOF ('end') before the
 * error. To see what the kernel says, these sockets are never read by libuv (created paused)
 * and are read here with read(2) on their descriptor instead, which returns the queued data,
 * then 0 for a FIN or fails with ECONNRESET for a reset.
 *
 * `rawRead(socket, onData)` polls every `interval` ms; `reader.ended` resolves with 'fin', the
 * error code ('ECONNRESET', ...), or 'closed' if Node closed the socket first (a write failed:
 * its error is then in `socket.errors`). Writes through Node stay possible meanwhile.
 * `reader.pause()` and `reader.resume()` stop and restart reading.
 */
export function rawRead(socket, onData, { interval = 2 } = {}) {
  const fd = socket._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('rawRead: the socket has no descriptor');
  const buf = Buffer.allocUnsafe(256 * 1024);
  let timer;
  const reader = { bytes: 0, end: undefined };
  reader.ended = new Promise((resolve) => {
    const finish = (end) => {
      reader.end = end;
      resolve(end);
    };
    const poll = () => {
      for (let reads = 0; ; reads++) {
        // A descriptor Node has closed may already belong to something else: never touch it.
        if (socket.destroyed || socket._handle?.fd !== fd) return finish('closed');
        if (reader.paused || reads === 16) {
          // Paused, or 4 MiB read: give the event loop a turn (the peer may never pause).
          timer = setTimeout(poll, reader.paused ? interval : 0);
          return;
        }
        let n;
        try {
          n = readSync(fd, buf, 0, buf.length, null);
        } catch (err) {
          if (err.code === 'EAGAIN') {
            timer = setTimeout(poll, interval);
            return;
          }
          return finish(err.code);
        }
        if (n === 0) return finish('fin');
        reader.bytes += n;
        onData(Buffer.from(buf.subarray(0, n)));
      }
    };
    poll();
  });
  reader.stop = () => clearTimeout(timer);
  /** Stop reading for a while: the peer's data then queues up in the kernel (backpressure). */
  reader.pause = () => (reader.paused = true);
  reader.resume = () => (reader.paused = false);
  return reader;
}

/**
 * The first sign of how a raw-read socket's peer went away: 'fin', or an error code (from
 * read(2), or from Node's write when Node closed the socket first).
 */
export async function rawOutcome(socket, reader, timeout, what) {
  const end = await withTimeout(reader.ended, timeout, what);
  if (end !== 'closed') return end;
  return socket.errors?.[0]?.code ?? 'closed';
}

/** Connect without ever letting libuv read (for rawRead). Errors go to `socket.errors`. Bounded. */
export function connectPaused(port, host = V4, timeout = 5000) {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  socket.pause(); // before the connection completes: Node then never starts reading
  socket.errors = [];
  socket.on('error', (err) => socket.errors.push(err));
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket));
      socket.once('error', reject);
    }),
    timeout,
    `connect to ${host}:${port}`,
    () => socket.destroy(),
  );
}

/**
 * A TCP server on 127.0.0.1 whose accepted sockets libuv never reads (pauseOnConnect), for
 * rawRead. `onConnection(socket, index)`; errors go to `socket.errors`. Returns
 * `{ port, sockets, close() }`.
 */
export async function startPausedServer(onConnection) {
  const sockets = new Set();
  let count = 0;
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
    sockets.add(socket);
    socket.errors = [];
    socket.on('error', (err) => socket.errors.push(err));
    socket.on('close', () => sockets.delete(socket));
    onConnection(socket, count++);
  });
  await withTimeout(
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: V4, port: 0, backlog: 4096 }, resolve);
    }),
    5000,
    'listen',
  );
  return {
    server,
    port: server.address().port,
    sockets,
    async close() {
      for (const s of sockets) s.destroy();
      await withTimeout(new Promise((resolve) => server.close(resolve)), 5000, 'server close').catch(
        () => {},
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

// spawnChild, spawnNode and killChildren live in helpers.mjs (one spawner for every test).
export { spawnChild, spawnNode, killChildren } from './helpers.mjs';

// ---------------------------------------------------------------------------------------------
// A proxy in a child process
// ---------------------------------------------------------------------------------------------

/**
 * The child: createProxy(config.proxy), one TCP mapping per config.targets entry (listening on
 * 127.0.0.1:0), then `READY [{ id, port }, ...]`. Commands come as JSON lines on stdin
 * ({ seq, cmd: 'stats' | 'remove' | 'close', arg }) and are answered with `REPLY {...}`.
 * It exits when stdin closes, so that a dying test process leaves nothing behind.
 */
const PROXY_CHILD = `
import readline from 'node:readline';
import { createProxy } from ${JSON.stringify(DIST_URL)};
const config = JSON.parse(process.argv[1]);
const json = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() + 'n' : x));
const proxy = createProxy(config.proxy);
const mappings = [];
for (const port of config.targets) {
  const m = await proxy.add({
    proto: 'tcp',
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port },
    ...config.mapping,
  });
  mappings.push({ id: m.id, port: m.listen.port });
}
process.stdout.write('READY ' + json(mappings) + '\\n');
const input = readline.createInterface({ input: process.stdin });
input.on('line', async (line) => {
  const { seq, cmd, arg } = JSON.parse(line);
  let result;
  let error;
  try {
    // A plain copy: the stats' own toJSON would turn the bigints into strings before json() saw them.
    if (cmd === 'stats') result = structuredClone(proxy.stats());
    else if (cmd === 'remove') await proxy.remove(arg);
    else if (cmd === 'close') await proxy.close(arg);
    else throw new Error('unknown command ' + cmd);
  } catch (err) {
    error = String(err && err.stack ? err.stack : err);
  }
  process.stdout.write('REPLY ' + json({ seq, result, error }) + '\\n');
});
input.on('close', () => process.exit(0));
`;

function reviveBigints(value) {
  return JSON.parse(JSON.stringify(value), (_k, v) =>
    typeof v === 'string' && /^\d+n$/.test(v) ? BigInt(v.slice(0, -1)) : v,
  );
}

/**
 * Start a proxy in a child process with `proxy` options (createProxy) and one mapping per
 * port of `targets` (extra add() options in `mapping`). Resolves
 * `{ child, pid, ports, ids, request(cmd, arg), stats(), mappingStats(i), cpu(), rss(), fds() }`.
 */
export async function startProxyChild({ proxy = {}, targets, mapping = {}, ulimitFds } = {}) {
  const child = spawnNode(PROXY_CHILD, [JSON.stringify({ proxy, targets, mapping })], {
    ulimitFds,
    stdin: true,
  });
  const ready = await child.waitLine(/^READY (.*)$/, 15000);
  const mappings = JSON.parse(ready[1]);
  let seq = 0;
  const pc = {
    child,
    pid: child.pid,
    ports: mappings.map((m) => m.port),
    ids: mappings.map((m) => m.id),
    async request(cmd, arg, timeout = 10000) {
      const mine = ++seq;
      child.stdin.write(`${JSON.stringify({ seq: mine, cmd, arg })}\n`);
      const line = await child.until(
        () => child.lines.find((l) => l.startsWith('REPLY ') && JSON.parse(l.slice(6)).seq === mine),
        `the reply to ${cmd}`,
        timeout,
      );
      const reply = JSON.parse(line.slice(6));
      if (reply.error) throw new Error(`proxy child: ${cmd} failed: ${reply.error}`);
      return reviveBigints(reply.result);
    },
    async stats() {
      return pc.request('stats');
    },
    async mappingStats(i = 0) {
      const s = await pc.request('stats');
      return s.mappings.find((m) => m.id === pc.ids[i]);
    },
    cpu: () => cpuSeconds(child.pid),
    rss: () => rssBytes(child.pid),
    fds: () => fdCount(child.pid),
    /** Poll the stats of mapping `i` until `pred` holds; returns them. */
    async waitStats(pred, what, { i = 0, timeout = 10000 } = {}) {
      let last;
      return waitFor(
        async () => {
          last = await pc.mappingStats(i);
          return last && pred(last) ? last : null;
        },
        {
          timeout,
          interval: 50,
          what,
          describe: () => JSON.stringify(last, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)),
        },
      );
    },
  };
  return pc;
}

/**
 * Start portsplice-docker-proxy on a free port of 127.0.0.1, forwarding to 127.0.0.1:`containerPort`,
 * and wait for "0\n" on fd 3 (a port taken meanwhile is retried). Resolves the child, with `port`.
 */
export async function startBinary(binaryPath, containerPort, { ulimitFds } = {}) {
  for (let attempt = 0; ; attempt++) {
    const hostPort = await freePort(V4);
    const args = ['-proto', 'tcp', '-host-ip', V4, '-host-port', String(hostPort)];
    args.push('-container-ip', V4, '-container-port', String(containerPort));
    const child = spawnChild(binaryPath, args, { statusPipe: true, ulimitFds });
    await child.until(() => child.status.length >= 2 || child.exitInfo, 'the status on fd 3').catch(() => {});
    if (child.status === '0\n') return Object.assign(child, { port: hostPort });
    if (child.exitInfo) await child.waitClosed(5000).catch(() => {}); // the whole status
    child.kill('SIGKILL');
    await child.waitExit(5000).catch(() => {});
    if (attempt < 3 && /EADDRINUSE/.test(child.status)) continue;
    throw new Error(
      `portsplice-docker-proxy did not start: status ${JSON.stringify(child.status)}; ${child.describe()}`,
    );
  }
}

/**
 * Runs `script` (an ES module, with `args`) in a network namespace of its own (`unshare -n`:
 * unnamed, gone when its last process exits, on every exit path) with loopback up, the given
 * sysctls (e.g. ['net.ipv4.tcp_tw_reuse=0']) and then the `setup` shell commands
 * (e.g. ['ip route add unreachable 198.18.0.0/24']).
 */
export function spawnInNamespace(sysctls, script, args = [], { setup = [] } = {}) {
  const commands = ['ip link set lo up', ...sysctls.map((s) => `sysctl -qw ${s}`), ...setup, 'exec "$@"'];
  return spawnChild('unshare', [
    '-n',
    'sh',
    '-c',
    commands.join(' && '),
    'sh',
    process.execPath,
    '--input-type=module',
    '-e',
    script,
    ...args.map(String),
  ]);
}

/** Why spawnInNamespace cannot run here, or null. */
export function namespaceSkipReason() {
  if (process.getuid?.() !== 0) return 'needs root, for a network namespace of its own';
  try {
    execFileSync('unshare', ['-n', 'true'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'unshare -n is not available';
  }
}
