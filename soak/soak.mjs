#!/usr/bin/env node
// Soak test of the splice engine: `npm run soak -- --minutes N` (not part of `npm test`).
//
// This process holds only the proxy under test (splice engine, 2 threads). A child process
// (load.mjs) runs the target servers and the load generators, so that
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
// EngineOptions::max_idle_pipes per thread, read from the addon); after close() descriptors,
// pipes and sockets must be exactly at the baseline, and resident memory within a bound.
// Exits 1 on any violation.
//
// soak.mjs is the process under test, load.mjs the load, protocol.mjs what they share.

import { fork } from 'node:child_process';
import { randomInt } from 'node:crypto';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { loadBinding } from '../dist/binding.js';
import { MiB, timeLimit } from './protocol.mjs';

const LOAD = fileURLToPath(new URL('./load.mjs', import.meta.url));
const THREADS = 2;
// The engine's own figures, from the addon (native/core/ps_worker.h): the idle pipes a worker
// keeps for reuse (EngineOptions::max_idle_pipes) and the descriptors a worker holds of its
// own (kFdsPerWorker: its epoll fd and wake-up eventfd).
const { maxIdlePipesPerThread: MAX_IDLE_PIPES_PER_THREAD, fdsPerWorker: ENGINE_FDS_PER_THREAD } =
  loadBinding().engineConstants;
const UDP_TIMEOUT_MS = 3000; // Short, so that flows expire during the run and at the end.

// Resident memory bounds. After close(), memory stays above the baseline by what the loaded
// addon, the engine threads' malloc arenas and V8 keep (measured: 6 MiB after 10 minutes).
// Under steady load, from the sample at a tenth of the run to the last one, it grows as
// arenas and the heap settle (measured: 8 MiB over 10 minutes); a leak of 32 bytes per
// connection would add 32 MiB over the million connections of a 10-minute run.
const RSS_END_BOUND_MIB = 32;
const RSS_GROWTH_BOUND_MIB = 32;

function parseOptions() {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '1' },
      interval: { type: 'string', default: '5' },
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
  return { minutes, interval };
}

process.exitCode = await runProxy(parseOptions());

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
  const child = fork(LOAD, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
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
