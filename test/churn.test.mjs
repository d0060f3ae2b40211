// @test-tag slow: about 15 s in network namespaces
// Connection churn with the client closing first (moby#47537): the proxy's socket to the
// target is then the active closer, and its source ports sit in TIME_WAIT for 60 s. Left to
// the kernel, connect() finds no free port once the range is used up within a minute
// (net.ipv4.tcp_tw_reuse=0, or 2 off loopback, lets it reuse none) and fails with
// EADDRNOTAVAIL. The proxy chooses its source ports itself, so TIME_WAIT entries are reused
// and every connection succeeds at a steady rate.
//
// It runs in a network namespace of its own (`unshare -n`, root only), where tcp_tw_reuse is
// 0 and ip_local_port_range holds 2,000 ports, so that 12,000 sequential connections cycle
// through every port six times within the TIME_WAIT period. The client spreads its own
// connections over 16 loopback addresses, so that its own TIME_WAIT entries are not the limit.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';

import { DIST_URL } from './helpers.mjs';
import { killChildren, namespaceSkipReason, spawnInNamespace } from './fault-helpers.mjs';

after(killChildren);

const CONNECTIONS = 12000;
const SLICE = 2000;
const PORTS = '40000 41999';

// In the namespace: an echo server that closes when the client does, the splice engine in
// front of it, and CONNECTIONS sequential connections that each send, read and close first.
const CHILD = `
import net from 'node:net';
import { createProxy } from ${JSON.stringify(DIST_URL)};
const [connections, slice] = process.argv.slice(1).map(Number);
const server = net.createServer((s) => s.on('data', (d) => s.write(d)));
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const proxy = createProxy({ engine: 'splice' });
const m = await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: server.address().port } });
const one = (i, port = m.listen.port) => new Promise((resolve) => {
  const socket = net.connect({ host: '127.0.0.1', port, ...(i < 0 ? {} : { localAddress: '127.0.0.' + (2 + (i % 16)) }) });
  let echoed = false;
  socket.on('connect', () => socket.write('x'));
  socket.on('data', () => { echoed = true; socket.end(); });
  socket.on('error', (e) => { socket.destroy(); resolve(e.code); });
  socket.on('close', () => resolve(echoed ? null : 'no echo'));
});
const rates = [];
const errors = {};
let failures = 0;
let start = performance.now();
const deadline = start + 120000;
for (let i = 0; i < connections && performance.now() < deadline; i++) {
  const error = await one(i);
  if (error) { failures++; errors[error] = (errors[error] ?? 0) + 1; }
  if ((i + 1) % slice === 0) {
    const now = performance.now();
    rates.push(Math.round(slice / ((now - start) / 1000)));
    start = now;
  }
}
const stats = proxy.stats().mappings[0].connections;
// A neighbour in the same namespace right after: plain connect()s, the kernel choosing the
// port, to another server. The proxy's bound ports and their TIME_WAIT must leave it ports.
const neighbour = net.createServer((s) => s.on('data', (d) => s.write(d)));
await new Promise((r) => neighbour.listen(0, '127.0.0.1', r));
const neighbourErrors = {};
for (let i = 0; i < 300; i++) {
  const error = await one(-1, neighbour.address().port);
  if (error) neighbourErrors[error] = (neighbourErrors[error] ?? 0) + 1;
}
console.log('RESULT ' + JSON.stringify({ rates, failures, errors, stats, neighbourErrors }));
await proxy.close();
server.close();
neighbour.close();
`;

test(
  `${CONNECTIONS} sequential client-closes-first connections over ${PORTS.replace(' ', '-')}, tcp_tw_reuse=0`,
  { skip: namespaceSkipReason() ?? false, timeout: 180000 },
  async (t) => {
    const child = spawnInNamespace(
      ['net.ipv4.tcp_tw_reuse=0', `net.ipv4.ip_local_port_range="${PORTS}"`],
      CHILD,
      [CONNECTIONS, SLICE],
    );
    const line = (await child.waitLine(/^RESULT (.*)$/, 170000))[1];
    const result = JSON.parse(line);
    const what = JSON.stringify(result);
    t.diagnostic(`connections/s per ${SLICE}: ${result.rates.join(', ')}; ${JSON.stringify(result.stats)}`);
    assert.equal(result.rates.length, CONNECTIONS / SLICE, `every connection ran within 120 s: ${what}`);
    assert.equal(result.failures, 0, `no client saw an error: ${what}`);
    assert.equal(result.stats.failed, 0, `no connect to the target failed: ${what}`);
    assert.equal(result.stats.accepted, CONNECTIONS, what);
    // Binding every port of the range left other programs none for 60 s (300 of 300 connects
    // failed with EADDRNOTAVAIL); the proxy binds odd ports only, connect() scans even first.
    assert.deepEqual(result.neighbourErrors, {}, `a neighbour's connect()s failed: ${what}`);
    // Sustained: the second half, where every port is reused from TIME_WAIT, runs at no less
    // than 0.4 times the rate of the first (halves, since single slices swing with the load
    // of a shared machine; the kernel's port search fell to a sixth here).
    const half = result.rates.length / 2;
    const mean = (rates) => rates.reduce((a, b) => a + b, 0) / rates.length;
    const ratio = mean(result.rates.slice(half)) / mean(result.rates.slice(0, half));
    assert.ok(ratio >= 0.4, `connections/s fell to ${ratio.toFixed(2)}× in the second half: ${what}`);
    await child.waitExit(10000);
  },
);

// The edges of choosing ports, in a range of 10: ports 40000-40004 have listeners of another
// program (bind must skip them), and the proxy then holds 5 connections open to one target,
// one per remaining port. A sixth finds every port taken: its client is reset at once, the
// failure is counted, and the proxy keeps serving once a port is free again.
const EDGES = `
import net from 'node:net';
import { createProxy } from ${JSON.stringify(DIST_URL)};
const listen = (port) => new Promise((resolve, reject) => {
  const s = net.createServer(() => {}).once('error', reject).listen(port, '127.0.0.1', () => resolve(s));
});
const others = [];
for (let port = 40000; port <= 40004; port++) others.push(await listen(port));
const sources = [];
const server = net.createServer((s) => { sources.push(s.remotePort); s.on('data', (d) => s.write(d)); });
await new Promise((r) => server.listen(5000, '127.0.0.1', r));
const proxy = createProxy({ engine: 'splice' });
const m = await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 6000 }, target: { host: '127.0.0.1', port: 5000 } });
const open = () => new Promise((resolve) => {
  const started = performance.now();
  const socket = net.connect({ host: '127.0.0.1', port: 6000, localAddress: '127.0.0.2' }, () => socket.write('x'));
  socket.once('data', () => resolve({ socket, ok: true }));
  socket.on('error', (e) => resolve({ socket, ok: false, code: e.code, ms: performance.now() - started }));
  socket.on('close', () => resolve({ socket, ok: false, code: 'closed', ms: performance.now() - started }));
});
const held = [];
for (let i = 0; i < 5; i++) held.push(await open());
const cpu0 = process.cpuUsage();
const sixth = await open();
const cpu = process.cpuUsage(cpu0);
const failed = proxy.stats().mappings[0].connections.failed;
held[0].socket.destroy();
await new Promise((r) => setTimeout(r, 200));
const after = await open();
console.log('RESULT ' + JSON.stringify({
  held: held.map((h) => h.ok), sources, sixth: { ok: sixth.ok, code: sixth.code, ms: Math.round(sixth.ms) },
  cpuMs: Math.round((cpu.user + cpu.system) / 1000), failed, after: after.ok,
}));
for (const h of [...held, sixth, after]) h.socket.destroy();
await proxy.close();
for (const s of [server, ...others]) s.close();
`;

test(
  'ports with listeners are skipped; with every port taken the client is reset at once',
  { skip: namespaceSkipReason() ?? false, timeout: 60000 },
  async () => {
    const child = spawnInNamespace(['net.ipv4.ip_local_port_range="40000 40009"'], EDGES);
    const result = JSON.parse((await child.waitLine(/^RESULT (.*)$/, 50000))[1]);
    const what = JSON.stringify(result);
    assert.deepEqual(result.held, [true, true, true, true, true], what);
    // The five free ports, each once: never a port another program listens on.
    assert.deepEqual(
      result.sources.slice(0, 5).sort(),
      [40005, 40006, 40007, 40008, 40009],
      `source ports: ${what}`,
    );
    assert.equal(result.sixth.ok, false, what);
    assert.equal(result.sixth.code, 'ECONNRESET', what);
    assert.ok(result.sixth.ms < 1000, `the reset was prompt: ${what}`);
    assert.ok(result.cpuMs < 500, `no spinning while ports were exhausted: ${what}`);
    assert.equal(result.failed, 1, `the failure was counted: ${what}`);
    assert.equal(result.after, true, `served again once a port was free: ${what}`);
    await child.waitExit(10000);
  },
);
