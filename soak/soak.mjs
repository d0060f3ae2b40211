#!/usr/bin/env node
// Soak test of the splice engine: `npm run soak -- --minutes N` (not part of `npm test`).
//
// This process holds only the proxy under test (splice engine, 2 threads). A child process
// (this file with --role=load) runs the target servers and the load generators, so that
// their descriptors and memory do not count here. The mix: many short TCP connections
// (echo, both kinds of half-close, resets from either end), a few long bulk streams both
// ways, slow trickling connections, and UDP flows; over IPv4 and IPv6 (an IPv6 listener
// with an IPv4 target too), to 127.0.0.1 and ::1 only. Besides the stable mappings, some
// are added and removed while traffic runs through them.
//
// Every payload is checked with sha256 on both ends (the target servers record what they
// received and sent; the clients compare), every UDP datagram carries the sha256 of its
// payload (checked at the target and again back at the client). A reset must surface as
// ECONNRESET at the other end, never as a clean end; a half-close must deliver everything
// sent after it. Connections cut by the removal of their mapping are counted, not failed.
//
// Every --interval seconds it prints this process's resident memory (VmRSS), descriptors
// (/proc/self/fd) and pipes (those of them that are pipes). At the end, after the load has
// stopped: every connection and UDP flow must be gone from the counters; after removing the
// mappings, the only descriptors left beyond the baseline (taken before the proxy was
// created) must be the engine's epoll and event fds and the pipes of its idle pools (at most
// max_idle_pipes = 64 per thread, see native/core/ps_worker.h); after close() descriptors,
// pipes and sockets must be exactly at the baseline, and resident memory within a bound.
// Exits 1 on any violation.

import { fork } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const SELF = fileURLToPath(import.meta.url);
const THREADS = 2;
const MAX_IDLE_PIPES_PER_THREAD = 64; // EngineOptions::max_idle_pipes in native/core/ps_worker.h.
const ENGINE_FDS_PER_THREAD = 2; // Each worker's epoll fd and wake-up eventfd.
const UDP_TIMEOUT_MS = 3000; // Short, so that flows expire during the run and at the end.
const MiB = 1024 * 1024;
// Bulk streams are paced, each way, so that they last seconds and leave the load process
// (which hashes every byte twice) time for the short connections.
const BULK_RATE = 24 * MiB;

// Resident memory bounds. After close(), memory stays above the baseline by what the loaded
// addon, the engine threads' malloc arenas and V8 keep (measured: 6 MiB after 10 minutes).
// Under steady load, from the sample at a tenth of the run to the last one, it grows as
// arenas and the heap settle (measured: 8 MiB over 10 minutes); a leak of 32 bytes per
// connection would add 32 MiB over the million connections of a 10-minute run.
const RSS_END_BOUND_MIB = 32;
const RSS_GROWTH_BOUND_MIB = 32;

// Modes of a TCP connection, shared by the clients and the target servers.
const MODE = {
  echo: 1, // The target echoes; the client half-closes after sending.
  bulk: 2, // Both send `down`/`up` bytes at once, each half-closes when done.
  halfCloseClient: 3, // The client sends and half-closes; then the target answers and ends.
  halfCloseServer: 4, // The target sends and half-closes first; then the client sends.
  resetByClient: 5, // The client sends, and resets after the target's one-byte acknowledgement.
  resetByServer: 6, // Both send; the target resets once the client has acknowledged its bytes.
  resetInFlight: 7, // The client sends; the target sends and resets at once, bytes in flight.
  trickle: 8, // Echo, with small writes spaced out over seconds.
};
// A reset that reaches a Node socket in the same wakeup as data is reported as a clean end:
// libuv's uv__stream_io() takes POLLHUP after a partial read for EOF without reading the
// error (with or without a proxy in between; a Python client sees ECONNRESET). So the strict
// modes make the reset arrive alone (after an acknowledgement of every byte), and a clean end
// in resetInFlight is accepted only if a write on the still open half then fails: the
// connection was reset, not half-closed.
const MODE_NAMES = Object.fromEntries(Object.entries(MODE).map(([k, v]) => [v, k]));
const HEADER_SIZE = 28; // magic u32, connection id u32, mode u8, 3 spare, down u64, up u64.
const TCP_MAGIC = 0x534f414b; // "SOAK"
const UDP_MAGIC = 0x55445053; // "UDPS"
const UDP_HEADER_SIZE = 16 + 32; // magic, flow, seq, length, then sha256 of the payload.

// ---------------------------------------------------------------------------------------------

function parseOptions() {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '1' },
      interval: { type: 'string', default: '5' },
      role: { type: 'string', default: 'proxy' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log('usage: npm run soak -- [--minutes N] [--interval SECONDS]');
    process.exit(0);
  }
  const minutes = Number(values.minutes);
  const interval = Number(values.interval);
  if (!(minutes > 0) || !(interval > 0))
    throw new RangeError('--minutes and --interval must be positive numbers');
  return { minutes, interval, role: values.role };
}

const options = parseOptions();
if (options.role === 'load') {
  await runLoad();
} else {
  process.exitCode = await runProxy(options);
}

// =============================================================================================
// The process under test: the proxy, the measurements, the mappings.
// =============================================================================================

/** Resident memory, and descriptors by kind, of this process. */
function sample() {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)[1]);
  const counts = { fds: 0, pipes: 0, sockets: 0, epoll: 0, eventfd: 0, other: 0 };
  for (const name of fs.readdirSync('/proc/self/fd')) {
    let link;
    try {
      link = fs.readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // The directory's own fd, closed by now.
    }
    counts.fds++;
    if (link.startsWith('pipe:')) counts.pipes++;
    else if (link.startsWith('socket:')) counts.sockets++;
    else if (link === 'anon_inode:[eventpoll]') counts.epoll++;
    else if (link === 'anon_inode:[eventfd]') counts.eventfd++;
    else counts.other++;
  }
  return { rssMiB: rssKiB / 1024, ...counts };
}

/** Resolves `value` after `ms`, without keeping the process alive (for races with a deadline). */
function timeLimit(ms, value) {
  return new Promise((resolve) => setTimeout(resolve, ms, value).unref());
}

function collectGarbage() {
  if (typeof globalThis.gc === 'function') {
    globalThis.gc();
    globalThis.gc();
  }
}

async function runProxy({ minutes, interval }) {
  const violations = [];
  const violate = (text) => {
    violations.push(text);
    console.error(`soak: VIOLATION: ${text}`);
  };
  const loadErrors = [];

  // The load generator and the target servers.
  const child = fork(SELF, ['--role=load'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  let childExited = false;
  let loadTotals = null;
  const waiters = new Map();
  // Resolves with the next message of `type`, or null once the load process has exited.
  const onceMessage = (type) =>
    childExited ? Promise.resolve(null) : new Promise((resolve) => waiters.set(type, resolve));
  child.on('message', (message) => {
    if (message.type === 'error') {
      loadErrors.push(message.text);
      if (loadErrors.length <= 50) console.error(`soak: ERROR (load): ${message.text}`);
    } else if (message.type === 'stats') {
      loadTotals = message.totals;
    }
    const waiter = waiters.get(message.type);
    if (waiter) {
      waiters.delete(message.type);
      waiter(message);
    }
  });
  child.on('exit', (code, signal) => {
    childExited = true;
    if (!stopping) violate(`the load process exited early (code ${code}, signal ${signal})`);
    for (const resolve of waiters.values()) resolve(null);
    waiters.clear();
  });
  let stopping = false;
  const ready = await onceMessage('ready');
  if (!ready) return 1;
  const { servers } = ready;

  const { createProxy } = await import('../dist/index.js');
  collectGarbage();
  await sleep(200);
  const baseline = sample();

  const proxy = createProxy({ engine: 'splice', threads: THREADS });
  const mappings = new Map(); // id -> { mapping, churn }
  const retiredTotals = { accepted: 0, bytes: 0n, datagrams: 0 };
  const publish = () =>
    child.send({
      type: 'mappings',
      list: [...mappings.values()].map((m) => ({
        id: m.mapping.id,
        proto: m.mapping.proto,
        host: m.mapping.listen.host,
        port: m.mapping.listen.port,
        churn: m.churn,
      })),
    });
  const addMapping = async (proto, listenHost, targetFamily, churn) => {
    const target =
      targetFamily === 6
        ? { host: '::1', port: servers[`${proto}6`] }
        : { host: '127.0.0.1', port: servers[`${proto}4`] };
    const mapping = await proxy.add({
      proto,
      listen: { host: listenHost, port: 0 },
      target,
      udpTimeoutMs: UDP_TIMEOUT_MS,
    });
    mappings.set(mapping.id, { mapping, churn });
    return mapping;
  };
  const statsById = () => new Map(proxy.stats().mappings.map((s) => [s.id, s]));
  const removeMapping = async (id) => {
    // Tell the load to start nothing new on it; what is in flight is cut by the removal.
    child.send({ type: 'retire', id });
    await onceMessage(`retired:${id}`);
    const last = statsById().get(id);
    if (last) addTotals(retiredTotals, last);
    mappings.delete(id);
    await proxy.remove(id);
    publish();
  };

  await addMapping('tcp', '127.0.0.1', 4, false);
  await addMapping('tcp', '::1', 4, false); // IPv6 listener, IPv4 target.
  await addMapping('tcp', '::1', 6, false);
  await addMapping('udp', '127.0.0.1', 4, false);
  await addMapping('udp', '::1', 6, false);
  publish();
  const idle = sample();

  // Run.
  const started = Date.now();
  const deadline = started + minutes * 60_000;
  const rows = [];
  let peak = { ...idle };
  const header =
    '   time   rss MiB   fds  pipes  socks | maps  active  accepted   conn/s  MiB moved   MiB/s | udp verified  lost | errors';
  console.log(
    `soak: ${minutes} min, proxy: splice engine, ${THREADS} threads; pid ${process.pid}, load pid ${child.pid}`,
  );
  console.log(
    `soak: baseline before createProxy: rss ${baseline.rssMiB.toFixed(1)} MiB, fds ${baseline.fds}, pipes ${baseline.pipes}, sockets ${baseline.sockets}`,
  );
  console.log(header);
  let previous = { t: 0, accepted: 0, bytes: 0n };
  const printRow = (label) => {
    const s = sample();
    for (const key of Object.keys(peak)) peak[key] = Math.max(peak[key], s[key]);
    const totals = { ...retiredTotals };
    let active = 0;
    for (const st of proxy.stats().mappings) {
      addTotals(totals, st);
      if (st.proto === 'tcp') active += st.connections.active;
    }
    const t = (Date.now() - started) / 1000;
    const dt = Math.max(t - previous.t, 0.001);
    const load = loadTotals ?? { udp: { verified: 0, lost: 0 }, errors: 0 };
    const row = {
      label,
      t,
      ...s,
      maps: mappings.size,
      active,
      accepted: totals.accepted,
      bytes: totals.bytes,
      udpVerified: load.udp.verified,
      udpLost: load.udp.lost,
      errors: loadErrors.length + violations.length,
    };
    rows.push(row);
    console.log(
      [
        label.padStart(7),
        s.rssMiB.toFixed(1).padStart(9),
        String(s.fds).padStart(5),
        String(s.pipes).padStart(6),
        String(s.sockets).padStart(6),
        '|',
        String(mappings.size).padStart(4),
        String(active).padStart(7),
        String(totals.accepted).padStart(9),
        ((totals.accepted - previous.accepted) / dt).toFixed(0).padStart(8),
        (Number(totals.bytes) / MiB).toFixed(0).padStart(10),
        (Number(totals.bytes - previous.bytes) / MiB / dt).toFixed(0).padStart(7),
        '|',
        String(load.udp.verified).padStart(12),
        String(load.udp.lost).padStart(5),
        '|',
        String(row.errors).padStart(6),
      ].join(' '),
    );
    previous = { t, accepted: totals.accepted, bytes: totals.bytes };
    return row;
  };

  child.send({ type: 'start' });
  let nextSample = Date.now() + interval * 1000;
  let nextChurn = Date.now() + 5000;
  let churnFamily = 0;
  const churnRemovals = [];
  while (Date.now() < deadline && !childExited) {
    const now = Date.now();
    if (now >= nextChurn) {
      // One TCP and one UDP mapping come, and go 15 to 25 s later, with traffic on them.
      nextChurn = now + 8000;
      churnFamily ^= 1;
      const host = churnFamily ? '::1' : '127.0.0.1';
      for (const proto of ['tcp', 'udp']) {
        const m = await addMapping(proto, host, churnFamily ? 6 : 4, true);
        churnRemovals.push({ id: m.id, at: now + 15000 + randomInt(10000) });
      }
      publish();
    }
    for (let i = churnRemovals.length - 1; i >= 0; i--) {
      if (churnRemovals[i].at <= now) {
        const [{ id }] = churnRemovals.splice(i, 1);
        await removeMapping(id);
      }
    }
    if (now >= nextSample) {
      nextSample += interval * 1000;
      printRow(`${Math.round((now - started) / 1000)}s`);
    }
    await sleep(100);
  }

  // Stop the load and let what is in flight finish.
  stopping = true;
  const done = onceMessage('done');
  child.send({ type: 'stop' });
  const finished = await Promise.race([done, timeLimit(180_000, null)]);
  if (!finished) violate('the load did not finish within 180 s of being asked to stop');
  else loadTotals = finished.totals;
  printRow('stopped');

  // Every connection must be closed in the engine, every UDP flow must expire.
  const settled = await waitUntil(() => {
    for (const st of proxy.stats().mappings) {
      if (st.proto === 'tcp' && st.connections.active !== 0) return false;
      if (st.proto === 'udp' && st.flows.active !== 0) return false;
    }
    return true;
  }, 10_000 + UDP_TIMEOUT_MS);
  if (!settled) {
    violate(
      `connections or flows still open in the engine after the load stopped: ${JSON.stringify(
        proxy.stats().mappings.map((s) => (s.proto === 'tcp' ? s.connections : s.flows)),
      )}`,
    );
  }
  const finalStats = proxy.stats().mappings;
  const engineTotals = { ...retiredTotals };
  const udpDrops = { total: 0, noFlow: 0, queueFull: 0, refused: 0, truncated: 0, other: 0 };
  let failedConnects = 0;
  for (const st of finalStats) {
    addTotals(engineTotals, st);
    if (st.proto === 'udp') for (const k of Object.keys(udpDrops)) udpDrops[k] += st.dropped[k];
    else failedConnects += st.connections.failed;
  }
  if (failedConnects > 0)
    violate(`${failedConnects} connections to the targets failed in the stable mappings`);
  printRow('settled');

  // Remove the mappings: what remains is the engine and its idle pipes.
  for (const id of [...mappings.keys()]) await removeMapping(id);
  await sleep(500);
  const removed = printRow('removed');
  const enginePipeFds = removed.pipes - baseline.pipes;
  const engineFds = removed.fds - baseline.fds;
  const expectedEngineFds = THREADS * ENGINE_FDS_PER_THREAD + enginePipeFds;
  if (removed.sockets !== baseline.sockets) {
    violate(`sockets after removing every mapping: ${removed.sockets}, baseline ${baseline.sockets}`);
  }
  if (engineFds !== expectedEngineFds) {
    violate(
      `descriptors after removing every mapping: ${removed.fds} = baseline ${baseline.fds} + ${engineFds}; ` +
        `expected ${THREADS * ENGINE_FDS_PER_THREAD} engine fds + ${enginePipeFds} pooled pipe fds`,
    );
  }
  if (
    enginePipeFds < 0 ||
    enginePipeFds % 2 !== 0 ||
    enginePipeFds > THREADS * MAX_IDLE_PIPES_PER_THREAD * 2
  ) {
    violate(
      `pipe fds held by the idle engine: ${enginePipeFds}; the pools hold at most ${THREADS * MAX_IDLE_PIPES_PER_THREAD * 2}`,
    );
  }

  // Close the proxy: back to the baseline.
  await proxy.close();
  await sleep(500);
  collectGarbage();
  await sleep(500);
  const closed = printRow('closed');
  for (const key of ['fds', 'pipes', 'sockets', 'epoll', 'eventfd']) {
    if (closed[key] !== baseline[key])
      violate(`${key} after close(): ${closed[key]}, baseline ${baseline[key]}`);
  }
  if (closed.rssMiB - baseline.rssMiB > RSS_END_BOUND_MIB) {
    violate(
      `resident memory after close(): ${closed.rssMiB.toFixed(1)} MiB, ${(closed.rssMiB - baseline.rssMiB).toFixed(1)} MiB above the baseline (bound ${RSS_END_BOUND_MIB})`,
    );
  }
  const underLoad = rows.filter((r) => /^\d+s$/.test(r.label));
  const warm = underLoad[Math.min(underLoad.length - 1, Math.max(1, Math.floor(underLoad.length / 10)))];
  const last = underLoad[underLoad.length - 1];
  if (warm && last && last.rssMiB - warm.rssMiB > RSS_GROWTH_BOUND_MIB) {
    violate(
      `resident memory grew under steady load from ${warm.rssMiB.toFixed(1)} MiB (${warm.label}) to ${last.rssMiB.toFixed(1)} MiB (${last.label}) (bound ${RSS_GROWTH_BOUND_MIB} MiB)`,
    );
  }

  child.send({ type: 'exit' });
  await Promise.race([new Promise((resolve) => child.once('exit', resolve)), timeLimit(5000)]);
  if (!childExited) child.kill('SIGKILL');

  // Summary.
  const lt = loadTotals;
  const line = (name, a, b, c, d) =>
    console.log(
      `  ${name.padEnd(10)} ${String(a).padStart(12)} ${String(b).padStart(12)} ${String(c).padStart(12)} ${String(d).padStart(12)}`,
    );
  console.log('\nsoak: summary');
  line('', 'baseline', 'idle proxy', 'peak', 'end (closed)');
  line(
    'rss MiB',
    baseline.rssMiB.toFixed(1),
    idle.rssMiB.toFixed(1),
    peak.rssMiB.toFixed(1),
    closed.rssMiB.toFixed(1),
  );
  line('fds', baseline.fds, idle.fds, peak.fds, closed.fds);
  line('pipes', baseline.pipes, idle.pipes, peak.pipes, closed.pipes);
  line('sockets', baseline.sockets, idle.sockets, peak.sockets, closed.sockets);
  console.log(
    `  after removing every mapping, before close(): ${removed.fds} fds = baseline + ${THREADS * ENGINE_FDS_PER_THREAD} engine fds + ${enginePipeFds / 2} idle pooled pipes`,
  );
  if (lt) {
    const modes = Object.entries(lt.tcp.byMode)
      .map(([mode, n]) => `${mode} ${n.ok}${n.cut ? ` (+${n.cut} cut)` : ''}`)
      .join(', ');
    console.log(
      `  TCP: ${lt.tcp.ok} connections verified (${modes}); ${lt.tcp.cut} cut by mapping removal; ` +
        `${(lt.tcp.bytesVerified / MiB).toFixed(0)} MiB verified by sha256 (both directions)`,
    );
    console.log(
      `  UDP: ${lt.udp.flows} flows, ${lt.udp.sent} datagrams sent, ${lt.udp.verified} verified at both ends, ` +
        `${lt.udp.lost} lost (${lt.udp.late} late), ${lt.udp.cut} cut by removal, ${(lt.udp.bytes / MiB).toFixed(1)} MiB`,
    );
  }
  console.log(
    `  engine: ${engineTotals.accepted} connections accepted, ${(Number(engineTotals.bytes) / MiB).toFixed(0)} MiB forwarded, ` +
      `${engineTotals.datagrams} datagrams; UDP drops ${JSON.stringify(udpDrops)}`,
  );
  if (lt && lt.udp.sent > 0 && lt.udp.lost > lt.udp.sent * 0.01) {
    violate(`UDP loss on the stable mappings above 1%: ${lt.udp.lost} of ${lt.udp.sent}`);
  }
  const errors = loadErrors.length + violations.length;
  console.log(`  errors: ${errors} (${loadErrors.length} from the load, ${violations.length} violations)`);
  for (const v of violations) console.log(`    - ${v}`);
  for (const e of loadErrors.slice(0, 20)) console.log(`    - ${e}`);
  console.log(errors === 0 ? 'soak: PASS' : 'soak: FAIL');
  return errors === 0 ? 0 : 1;
}

function addTotals(totals, st) {
  totals.bytes += st.bytes.toTarget + st.bytes.toClient;
  if (st.proto === 'tcp') totals.accepted += st.connections.accepted;
  else totals.datagrams += st.datagrams.toTarget + st.datagrams.toClient;
}

async function waitUntil(predicate, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (predicate()) return true;
    await sleep(100);
  }
  return predicate();
}

// =============================================================================================
// The load process: target servers and clients.
// =============================================================================================

async function runLoad() {
  const POOL_SIZE = 8 * MiB;
  const pool = randomBytes(POOL_SIZE);
  const totals = {
    tcp: { ok: 0, cut: 0, bytesVerified: 0, byMode: {} },
    udp: { flows: 0, sent: 0, verified: 0, lost: 0, late: 0, cut: 0, bytes: 0 },
    errors: 0,
  };
  for (const name of Object.keys(MODE)) totals.tcp.byMode[name] = { ok: 0, cut: 0 };
  // Messages to the proxy process; if it has gone, so does this process.
  const send = (message) => process.connected && process.send(message);
  process.on('disconnect', () => process.exit(0));
  const fail = (text) => {
    totals.errors++;
    send({ type: 'error', text });
  };
  let running = false;
  let stopRequested = false;
  let mappings = [];
  const retired = new Set();

  // A slice of the random pool: the payloads.
  const piece = (max) => {
    const length = Math.min(max, 1 + randomInt(Math.min(max, 256 * 1024)));
    const offset = randomInt(POOL_SIZE - length + 1);
    return pool.subarray(offset, offset + length);
  };
  const drained = (socket) =>
    new Promise((resolve, reject) => {
      const cleanup = () => {
        socket.off('drain', onDrain);
        socket.off('close', onClose);
      };
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(Object.assign(new Error('closed while writing'), { code: 'ECLOSED' }));
      };
      socket.on('drain', onDrain);
      socket.on('close', onClose);
    });
  // Writes `n` bytes from the pool, hashing them, at most `rate` bytes a second if given.
  // `keep` collects them too. Returns `n`.
  const sendBytes = async (socket, n, hash, { keep, rate } = {}) => {
    const start = Date.now();
    let left = n;
    while (left > 0) {
      if (socket.destroyed) throw Object.assign(new Error('destroyed while writing'), { code: 'ECLOSED' });
      const chunk = piece(left);
      left -= chunk.length;
      hash.update(chunk);
      keep?.push(chunk);
      if (!socket.write(chunk)) await drained(socket);
      if (rate) {
        const ahead = ((n - left) / rate) * 1000 - (Date.now() - start);
        if (ahead > 5) await sleep(ahead);
      }
    }
    return n;
  };

  // --- Target servers ------------------------------------------------------------------------

  // What the target servers saw of each connection, handed to the client that made it.
  const results = new Map();
  const resultWaiters = new Map();
  const abandoned = new Set();
  const putResult = (id, result) => {
    if (abandoned.delete(id)) return;
    const waiter = resultWaiters.get(id);
    if (waiter) {
      resultWaiters.delete(id);
      waiter(result);
    } else {
      results.set(id, result);
    }
  };
  const takeResult = (id, timeoutMs) => {
    if (results.has(id)) {
      const r = results.get(id);
      results.delete(id);
      return Promise.resolve(r);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        resultWaiters.delete(id);
        abandoned.add(id);
        resolve(null);
      }, timeoutMs);
      resultWaiters.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  };
  const abandonResult = (id) => {
    if (!results.delete(id)) abandoned.add(id);
  };

  const serveTcp = (socket) => {
    socket.setNoDelay(true);
    const st = { recv: createHash('sha256'), recvBytes: 0, sent: createHash('sha256'), sentBytes: 0 };
    let head = Buffer.alloc(0);
    let id = -1;
    let mode = 0;
    let down = 0;
    let up = 0;
    let sawEnd = false;
    let error = null;
    let kept = null;
    const send = async (n) => {
      try {
        await sendBytes(socket, n, st.sent, { keep: kept, rate: mode === MODE.bulk ? BULK_RATE : 0 });
        st.sentBytes += n;
      } catch {
        /* The connection died; the client judges the outcome. */
      }
    };
    const onHeader = () => {
      if (head.readUInt32BE(0) !== TCP_MAGIC) {
        fail(`target: bad header ${head.subarray(0, HEADER_SIZE).toString('hex')}`);
        socket.destroy();
        return;
      }
      id = head.readUInt32BE(4);
      mode = head.readUInt8(8);
      down = Number(head.readBigUInt64BE(12));
      up = Number(head.readBigUInt64BE(20));
      if (mode === MODE.bulk || mode === MODE.halfCloseServer) send(down).then(() => socket.end());
      else if (mode === MODE.resetInFlight) kept = [];
      if (up === 0) onAllReceived();
    };
    // The reset modes act once the client's bytes are all in.
    let allReceived = false;
    const onAllReceived = () => {
      allReceived = true;
      if (mode === MODE.resetByClient) {
        socket.write('A');
        st.sent.update('A');
        st.sentBytes += 1;
      } else if (mode === MODE.resetByServer) {
        send(down); // The client acknowledges them with one more byte; then reset.
      } else if (mode === MODE.resetInFlight) {
        // Once the bytes are with the kernel: reset, while they are still on their way.
        send(down).then(() => socket.write(Buffer.alloc(0), () => socket.resetAndDestroy()));
      }
    };
    const onBody = (chunk) => {
      st.recv.update(chunk);
      st.recvBytes += chunk.length;
      if (!allReceived && st.recvBytes >= up) onAllReceived();
      if (mode === MODE.resetByServer && st.recvBytes > up) socket.resetAndDestroy();
      if (mode === MODE.echo || mode === MODE.trickle) {
        st.sent.update(chunk);
        st.sentBytes += chunk.length;
        if (!socket.write(chunk)) {
          socket.pause();
          socket.once('drain', () => socket.resume());
        }
      }
    };
    socket.on('data', (chunk) => {
      if (id < 0) {
        head = Buffer.concat([head, chunk]);
        if (head.length < HEADER_SIZE) return;
        chunk = head.subarray(HEADER_SIZE);
        onHeader();
        if (id < 0) return;
      }
      if (chunk.length > 0) onBody(chunk);
    });
    socket.on('end', () => {
      sawEnd = true;
      if (mode === MODE.echo || mode === MODE.trickle) socket.end();
      else if (mode === MODE.halfCloseClient) send(down).then(() => socket.end());
    });
    socket.on('error', (e) => {
      error = e.code ?? e.message;
    });
    socket.on('close', () => {
      if (id < 0) return; // Cut before the header arrived: nothing to report.
      putResult(id, {
        mode,
        recvHash: st.recv.digest('hex'),
        recvBytes: st.recvBytes,
        sentHash: st.sent.digest('hex'),
        sentBytes: st.sentBytes,
        sentData: kept ? Buffer.concat(kept) : null,
        sawEnd,
        error,
      });
    });
  };

  const serveUdp = (socket) => {
    socket.on('message', (msg, rinfo) => {
      if (msg.length < UDP_HEADER_SIZE || msg.readUInt32BE(0) !== UDP_MAGIC) {
        fail(`udp target: a datagram without the soak header (${msg.length} bytes)`);
        return;
      }
      const length = msg.readUInt32BE(12);
      const payload = msg.subarray(UDP_HEADER_SIZE);
      if (
        payload.length !== length ||
        !createHash('sha256').update(payload).digest().equals(msg.subarray(16, 48))
      ) {
        fail(`udp target: corrupted datagram (flow ${msg.readUInt32BE(4)}, seq ${msg.readUInt32BE(8)})`);
        return;
      }
      socket.send(msg, rinfo.port, rinfo.address);
    });
  };

  const listenTcp = (host) =>
    new Promise((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: true }, serveTcp);
      server.on('error', reject);
      server.listen({ host, port: 0, backlog: 4096 }, () => resolve(server));
    });
  const bindUdp = (type, host) =>
    new Promise((resolve, reject) => {
      const socket = dgram.createSocket({ type, recvBufferSize: 4 * MiB, sendBufferSize: 4 * MiB });
      serveUdp(socket);
      socket.on('error', reject);
      socket.bind(0, host, () => resolve(socket));
    });
  const tcp4 = await listenTcp('127.0.0.1');
  const tcp6 = await listenTcp('::1');
  const udp4 = await bindUdp('udp4', '127.0.0.1');
  const udp6 = await bindUdp('udp6', '::1');

  // --- Clients -------------------------------------------------------------------------------

  let nextConnection = 1;
  let nextFlow = 1;
  const pick = (proto) => {
    const live = mappings.filter((m) => m.proto === proto && !retired.has(m.id));
    return live.length > 0 ? live[randomInt(live.length)] : null;
  };

  /** One TCP connection of `mode` through `m`, checked at both ends. */
  const tcpConnection = async (m, mode, up, down) => {
    const id = nextConnection++;
    const name = MODE_NAMES[mode];
    const what = `${name} #${id} via ${m.host}:${m.port}${m.churn ? ' (churn)' : ''} up ${up} down ${down}`;
    const socket = net.connect({ host: m.host, port: m.port, allowHalfOpen: true });
    socket.setNoDelay(true);
    const recv = createHash('sha256');
    const sent = createHash('sha256');
    const received = mode === MODE.resetInFlight ? [] : null;
    let recvBytes = 0;
    let sentBytes = 0;
    let sawEnd = false;
    let error = null;
    let onData = null;
    let onEnd = null;
    let probe = null;
    socket.on('data', (chunk) => {
      recv.update(chunk);
      recvBytes += chunk.length;
      received?.push(chunk);
      onData?.();
    });
    socket.on('end', () => {
      sawEnd = true;
      onEnd?.();
      if (mode === MODE.resetInFlight) {
        // See MODE: a reset must make this write fail; a half-close would let it through.
        socket.write('P');
        probe = setTimeout(() => socket.destroy(), 10_000);
      }
    });
    const received_ = (n) =>
      recvBytes >= n || socket.destroyed
        ? Promise.resolve()
        : new Promise((resolve) => {
            onData = () => {
              if (recvBytes >= n) resolve();
            };
            onEnd = resolve;
          });
    socket.on('error', (e) => {
      error = e.code ?? e.message;
    });
    const closed = new Promise((resolve) =>
      socket.on('close', () => {
        clearTimeout(probe);
        onData?.();
        onEnd?.();
        resolve();
      }),
    );
    const header = Buffer.alloc(HEADER_SIZE);
    header.writeUInt32BE(TCP_MAGIC, 0);
    header.writeUInt32BE(id, 4);
    header.writeUInt8(mode, 8);
    header.writeBigUInt64BE(BigInt(down), 12);
    header.writeBigUInt64BE(BigInt(up), 20);
    const timeout = setTimeout(() => {
      fail(`${what}: no end after 120 s (received ${recvBytes}, sawEnd ${sawEnd}, error ${error})`);
      socket.destroy();
    }, 120_000);

    try {
      socket.write(header);
      if (mode === MODE.echo || mode === MODE.halfCloseClient) {
        sentBytes += await sendBytes(socket, up, sent);
        socket.end();
      } else if (mode === MODE.bulk) {
        sentBytes += await sendBytes(socket, up, sent, { rate: BULK_RATE });
        socket.end();
      } else if (mode === MODE.trickle) {
        for (let i = 0; i < 10 && !socket.destroyed; i++) {
          sentBytes += await sendBytes(socket, 1 + randomInt(2000), sent);
          await sleep(50 + randomInt(300));
        }
        socket.end();
      } else if (mode === MODE.halfCloseServer) {
        // Only once the target's FIN has arrived does the client send its part.
        if (!sawEnd) await new Promise((resolve) => (onEnd = resolve));
        sentBytes += await sendBytes(socket, up, sent);
        socket.end();
      } else if (mode === MODE.resetByClient) {
        sentBytes += await sendBytes(socket, up, sent);
        await received_(1);
        socket.resetAndDestroy();
      } else if (mode === MODE.resetByServer) {
        sentBytes += await sendBytes(socket, up, sent);
        await received_(down);
        socket.write('K');
        sent.update('K');
        sentBytes += 1;
      } else if (mode === MODE.resetInFlight) {
        sentBytes += await sendBytes(socket, up, sent);
      }
    } catch {
      /* Judged below from what the socket saw. */
    }
    await closed;
    clearTimeout(timeout);

    const cut = retired.has(m.id);
    const clientHash = recv.digest('hex');
    const sentHash = sent.digest('hex');
    // A connection on a mapping being removed is reset by the removal.
    if (error && cut && ['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ECLOSED'].includes(error)) {
      totals.tcp.cut++;
      totals.tcp.byMode[name].cut++;
      abandonResult(id);
      return;
    }
    const resetModes = [MODE.resetByServer, MODE.resetInFlight];
    if (error && !resetModes.includes(mode)) {
      fail(`${what}: ${error} at the client`);
      abandonResult(id);
      return;
    }
    if (resetModes.includes(mode)) {
      const server = await takeResult(id, 10_000);
      const problems = [];
      if (mode === MODE.resetByServer) {
        if (sawEnd) problems.push("the target's reset reached the client as a clean end");
        else if (error !== 'ECONNRESET') problems.push(`the target's reset reached the client as ${error}`);
      } else if (!['ECONNRESET', 'EPIPE'].includes(error)) {
        problems.push(
          `the target's reset reached the client as ${sawEnd ? 'a clean end, and a write after it went through' : error}`,
        );
      }
      if (!server) problems.push('no report from the target');
      else {
        if (server.recvBytes !== sentBytes)
          problems.push(`the target received ${server.recvBytes} of ${sentBytes} bytes`);
        if (server.recvHash !== sentHash) problems.push('sha256 of the bytes to the target differs');
        if (
          mode === MODE.resetByServer &&
          (recvBytes !== server.sentBytes || clientHash !== server.sentHash)
        ) {
          problems.push(`the client received ${recvBytes} of ${server.sentBytes} bytes, or other bytes`);
        }
        if (mode === MODE.resetInFlight) {
          const got = Buffer.concat(received);
          if (!server.sentData.subarray(0, got.length).equals(got)) {
            problems.push('the bytes before the reset are not a prefix of what the target sent');
          }
        }
      }
      if (problems.length > 0) {
        fail(`${what}: ${problems.join('; ')}`);
        return;
      }
      totals.tcp.byMode[name].ok++;
      totals.tcp.ok++;
      totals.tcp.bytesVerified += recvBytes + server.recvBytes;
      return;
    }
    const server = await takeResult(id, 10_000);
    if (!server) {
      if (cut) {
        totals.tcp.cut++;
        totals.tcp.byMode[name].cut++;
      } else {
        fail(`${what}: no report from the target`);
      }
      return;
    }
    if (mode === MODE.resetByClient) {
      if (server.sawEnd) fail(`${what}: the client's reset reached the target as a clean end`);
      else if (server.error !== 'ECONNRESET')
        fail(`${what}: the client's reset reached the target as ${server.error}`);
      else if (server.recvBytes !== sentBytes || server.recvHash !== sentHash) {
        fail(`${what}: the target received ${server.recvBytes} of ${sentBytes} bytes, or other bytes`);
      } else {
        totals.tcp.byMode[name].ok++;
        totals.tcp.ok++;
        totals.tcp.bytesVerified += server.recvBytes;
      }
      return;
    }
    if (cut && (server.error || !server.sawEnd || !sawEnd)) {
      // The removal of the mapping reset the connection before it was over at both ends.
      totals.tcp.cut++;
      totals.tcp.byMode[name].cut++;
      return;
    }
    // Every other mode ends cleanly both ways with every byte delivered.
    const problems = [];
    if (!sawEnd) problems.push('the client saw no end');
    if (!server.sawEnd) problems.push('the target saw no end');
    if (server.error) problems.push(`the target saw ${server.error}`);
    if (server.recvBytes !== sentBytes)
      problems.push(`the target received ${server.recvBytes} of ${sentBytes} bytes`);
    if (server.recvHash !== sentHash) problems.push('sha256 of the bytes to the target differs');
    if (recvBytes !== server.sentBytes)
      problems.push(`the client received ${recvBytes} of ${server.sentBytes} bytes`);
    if (clientHash !== server.sentHash) problems.push('sha256 of the bytes to the client differs');
    if (problems.length > 0) {
      fail(`${what}: ${problems.join('; ')}`);
      return;
    }
    totals.tcp.byMode[name].ok++;
    totals.tcp.ok++;
    totals.tcp.bytesVerified += recvBytes + server.recvBytes;
  };

  /** One UDP flow: a socket that sends `count` datagrams in windows, each echoed and checked. */
  const udpFlow = async (m, count) => {
    const flow = nextFlow++;
    const socket = dgram.createSocket({ type: m.host.includes(':') ? 'udp6' : 'udp4' });
    const outstanding = new Map(); // seq -> sha256
    const seen = new Set();
    let onSettled = null;
    socket.on('message', (msg) => {
      if (msg.length < UDP_HEADER_SIZE || msg.readUInt32BE(0) !== UDP_MAGIC || msg.readUInt32BE(4) !== flow) {
        fail(`udp flow ${flow} via ${m.host}:${m.port}: a reply that is not its own (${msg.length} bytes)`);
        return;
      }
      const seq = msg.readUInt32BE(8);
      const payload = msg.subarray(UDP_HEADER_SIZE);
      const digest = createHash('sha256').update(payload).digest();
      if (payload.length !== msg.readUInt32BE(12) || !digest.equals(msg.subarray(16, 48))) {
        fail(`udp flow ${flow}: corrupted reply, seq ${seq}`);
        return;
      }
      if (seen.has(seq)) {
        fail(`udp flow ${flow}: duplicate reply, seq ${seq}`);
        return;
      }
      seen.add(seq);
      if (!outstanding.has(seq)) {
        totals.udp.late++;
        return;
      }
      outstanding.delete(seq);
      totals.udp.verified++;
      totals.udp.bytes += payload.length;
      if (outstanding.size === 0) onSettled?.();
    });
    socket.on('error', (e) => fail(`udp flow ${flow}: ${e.message}`));
    await new Promise((resolve) => socket.bind(0, m.host, resolve));
    totals.udp.flows++;
    let seq = 0;
    while (seq < count && !stopRequested && !retired.has(m.id)) {
      const window = 1 + randomInt(16);
      for (let i = 0; i < window; i++, seq++) {
        const roll = randomInt(100);
        const size = roll < 1 ? 8000 + randomInt(52000) : roll < 6 ? 1400 + randomInt(6600) : randomInt(1401);
        const payload = size === 0 ? Buffer.alloc(0) : piece(size);
        const msg = Buffer.alloc(UDP_HEADER_SIZE + payload.length);
        msg.writeUInt32BE(UDP_MAGIC, 0);
        msg.writeUInt32BE(flow, 4);
        msg.writeUInt32BE(seq, 8);
        msg.writeUInt32BE(payload.length, 12);
        createHash('sha256').update(payload).digest().copy(msg, 16);
        payload.copy(msg, UDP_HEADER_SIZE);
        outstanding.set(seq, true);
        socket.send(msg, m.port, m.host);
        totals.udp.sent++;
      }
      await Promise.race([new Promise((resolve) => (onSettled = resolve)), timeLimit(2000)]);
      onSettled = null;
      if (outstanding.size > 0) {
        if (retired.has(m.id)) {
          totals.udp.cut += outstanding.size;
          totals.udp.sent -= outstanding.size;
        } else {
          totals.udp.lost += outstanding.size;
        }
        outstanding.clear();
      }
      await sleep(randomInt(20));
    }
    await new Promise((resolve) => socket.close(resolve));
  };

  const lanes = [];
  const lane = (body) =>
    lanes.push(
      (async () => {
        while (!stopRequested) {
          try {
            await body();
          } catch (e) {
            fail(`lane: ${e.stack ?? e}`);
          }
        }
      })(),
    );
  const idleWait = () => sleep(50);
  const startLanes = () => {
    // Many short connections of every kind.
    for (let i = 0; i < 24; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        const roll = randomInt(100);
        const small = () => (randomInt(10) === 0 ? 0 : randomInt(64 * 1024));
        if (roll < 60) return tcpConnection(m, MODE.echo, small(), 0);
        if (roll < 72) return tcpConnection(m, MODE.halfCloseClient, small(), small());
        if (roll < 84) return tcpConnection(m, MODE.halfCloseServer, small(), small());
        if (roll < 90) return tcpConnection(m, MODE.resetByClient, randomInt(4096), 0);
        if (roll < 95) return tcpConnection(m, MODE.resetByServer, randomInt(4096), randomInt(32 * 1024));
        return tcpConnection(m, MODE.resetInFlight, randomInt(4096), 1 + randomInt(256 * 1024));
      });
    }
    // Long bulk streams: up to 256 MiB each way, paced, sometimes one way only.
    for (let i = 0; i < 2; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        const size = () => (randomInt(5) === 0 ? 0 : 16 * MiB + randomInt(240 * MiB));
        return tcpConnection(m, MODE.bulk, size(), size());
      });
    }
    // Slow connections that stay open for seconds.
    for (let i = 0; i < 4; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        return tcpConnection(m, MODE.trickle, 0, 0);
      });
    }
    // UDP flows, each a new client socket.
    for (let i = 0; i < 6; i++) {
      lane(async () => {
        const m = pick('udp');
        if (!m) return idleWait();
        return udpFlow(m, 50 + randomInt(1000));
      });
    }
  };

  const report = () => send({ type: 'stats', totals });
  const reporter = setInterval(report, 1000);
  process.on('message', async (message) => {
    if (message.type === 'mappings') {
      mappings = message.list;
    } else if (message.type === 'retire') {
      retired.add(message.id);
      send({ type: `retired:${message.id}` });
    } else if (message.type === 'start' && !running) {
      running = true;
      startLanes();
    } else if (message.type === 'stop') {
      stopRequested = true;
      await Promise.all(lanes);
      report();
      send({ type: 'done', totals });
    } else if (message.type === 'exit') {
      clearInterval(reporter);
      for (const server of [tcp4, tcp6]) server.close();
      for (const socket of [udp4, udp6]) socket.close();
      process.disconnect();
    }
  });
  process.send({
    type: 'ready',
    servers: {
      tcp4: tcp4.address().port,
      tcp6: tcp6.address().port,
      udp4: udp4.address().port,
      udp6: udp6.address().port,
    },
  });
}
