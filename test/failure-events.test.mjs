// Failure events and failure reasons, both engines, over real sockets: a closed target port
// (refused), an `unreachable` route and a silently dropping neighbour in a network namespace
// of the test's own (unreachable, timeout), the counters by reason and the events agreeing,
// nothing recorded without a listener, the queue's bound with nobody reading (the splice
// engine's threads go on failing connections while JavaScript is blocked), and the command's
// rate-limited log lines.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { createProxy } from '../dist/index.js';
import { EventQueue, EVENT_QUEUE_CAPACITY } from '../dist/events.js';
import {
  ENGINES,
  V4,
  DIST_URL,
  closedPort,
  freePort,
  waitFor,
  addMapping,
  safeClose,
  show,
} from './helpers.mjs';
import {
  CLI_PATH,
  killChildren,
  namespaceSkipReason,
  spawnChild,
  spawnInNamespace,
} from './fault-helpers.mjs';

after(killChildren);

/**
 * One client connection that the proxy accepts and then resets; resolves with its local port.
 * The port is read right after connect(2) was called (net.connect calls it on the next tick
 * for an address literal): the reset can come before Node reports the connect (libuv then
 * sees ECONNRESET in SO_ERROR), after which the socket no longer tells its address.
 */
async function failingConnection(port) {
  const socket = net.connect({ port, host: V4 });
  const closed = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connection to ${port} was not closed within 5 s`));
    }, 5000);
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  await new Promise((resolve) => process.nextTick(resolve));
  const localPort = socket.localPort;
  assert.equal(typeof localPort, 'number', 'the client socket is bound');
  await closed;
  return localPort;
}

/** Collects the proxy's batches; `events()` flattens them. */
function subscribe(proxy) {
  const batches = [];
  const listener = (batch) => batches.push(batch);
  proxy.on('events', listener);
  return {
    batches,
    listener,
    events: () => batches.flatMap((b) => b.events),
    dropped: () => batches.reduce((n, b) => n + b.dropped, 0),
  };
}

for (const engine of ENGINES) {
  describe(`failure events [${engine}]`, () => {
    test('a closed target port: refused events with the addresses, and the refused counter', async (t) => {
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const closed = await closedPort();
      const m = await addMapping(proxy, closed);
      const sub = subscribe(proxy);
      const clients = [];
      for (let i = 0; i < 3; i++) clients.push(await failingConnection(m.listen.port));
      await waitFor(() => sub.events().length >= 3, { what: '3 events', describe: () => show(sub.batches) });
      const events = sub.events();
      assert.equal(events.length, 3, show(sub.batches));
      assert.ok(sub.batches.length <= 3, 'delivered in batches');
      for (const e of events) {
        assert.equal(e.type, 'targetFailure');
        assert.equal(e.reason, 'refused');
        assert.equal(e.code, 'ECONNREFUSED');
        assert.equal(e.errno, -111);
        assert.equal(e.mapping, m.id);
        assert.deepEqual(e.listen, { host: V4, port: m.listen.port });
        assert.deepEqual(e.target, { host: V4, port: closed });
        assert.equal(e.client.host, V4);
        assert.ok(Math.abs(e.time - Date.now()) < 10000, `time ${e.time} is now`);
      }
      assert.deepEqual(
        events.map((e) => e.client.port).sort(),
        [...clients].sort(),
        'each event names its client',
      );
      const s = proxy.stats(m);
      assert.equal(s.connections.failed, 3);
      assert.deepEqual(s.connections.failedBy, { refused: 3, timeout: 0, unreachable: 0, other: 0 });
      assert.equal(s.events.dropped, 0);
      assert.equal(sub.dropped(), 0);
    });

    test('without a listener nothing is recorded; after off() neither', async (t) => {
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const m = await addMapping(proxy, await closedPort());
      for (let i = 0; i < 5; i++) await failingConnection(m.listen.port);
      await waitFor(() => proxy.stats(m).connections.failed === 5, { what: 'the 5 failures counted' });
      const sub = subscribe(proxy);
      const client = await failingConnection(m.listen.port);
      await waitFor(() => sub.events().length >= 1, { what: 'the event' });
      // Wait past another batch period: the five earlier failures must not come.
      await new Promise((resolve) => setTimeout(resolve, 150));
      assert.deepEqual(
        sub.events().map((e) => e.client.port),
        [client],
        'only the failure after subscribing',
      );
      proxy.off('events', sub.listener);
      const late = subscribe(proxy);
      proxy.off('events', late.listener);
      for (let i = 0; i < 3; i++) await failingConnection(m.listen.port);
      await new Promise((resolve) => setTimeout(resolve, 150));
      assert.equal(sub.events().length, 1);
      assert.equal(late.events().length, 0);
      assert.equal(proxy.stats(m).connections.failedBy.refused, 9, 'the counters count them all');
      assert.equal(proxy.stats(m).events.dropped, 0, 'nothing was queued to be dropped');
    });

    test(
      'an unreachable route and a target that never answers (in a namespace of its own)',
      { skip: namespaceSkipReason() ?? false, timeout: 30000 },
      async () => {
        // 198.18.0.0/24: an `unreachable` route (connect() fails with EHOSTUNREACH at once).
        // 198.18.1.2: a neighbour whose frames go to a veth peer without an address, which
        // drops them: SYNs are never answered, so connectTimeoutMs (300 ms) gives up.
        const child = spawnInNamespace([], NAMESPACE_CHILD, [engine], {
          setup: [
            'ip route add unreachable 198.18.0.0/24',
            'ip link add psa0 type veth peer name psa1',
            'ip addr add 198.18.1.1/24 dev psa0',
            'ip link set psa0 up',
            'ip link set psa1 up',
            'ip neigh add 198.18.1.2 lladdr 02:00:00:00:00:01 dev psa0',
          ],
        });
        const result = JSON.parse((await child.waitLine(/^RESULT (.*)$/, 20000))[1]);
        await child.waitExit(10000);
        const what = show(result);
        const [unreachable, timeout] = result.events;
        assert.equal(result.events.length, 2, what);
        assert.equal(unreachable.reason, 'unreachable', what);
        assert.equal(unreachable.code, 'EHOSTUNREACH', what);
        assert.deepEqual(unreachable.target, { host: '198.18.0.1', port: 80 });
        assert.equal(timeout.reason, 'timeout', what);
        assert.equal(timeout.code, 'ETIMEDOUT', what);
        assert.deepEqual(timeout.target, { host: '198.18.1.2', port: 80 });
        assert.ok(
          result.ms[1] >= 250 && result.ms[1] < 3000,
          `given up after ${result.ms[1]} ms (300 asked)`,
        );
        assert.deepEqual(result.failedBy[0], { refused: 0, timeout: 0, unreachable: 1, other: 0 }, what);
        assert.deepEqual(result.failedBy[1], { refused: 0, timeout: 1, unreachable: 0, other: 0 }, what);
      },
    );
  });
}

const NAMESPACE_CHILD = `
import net from 'node:net';
import { createProxy } from ${JSON.stringify(DIST_URL)};
const proxy = createProxy({ engine: process.argv[1] });
const events = [];
proxy.on('events', (batch) => events.push(...batch.events));
const listen = { host: '127.0.0.1', port: 0 };
const unreachable = await proxy.add({ proto: 'tcp', listen, target: { host: '198.18.0.1', port: 80 } });
const hole = await proxy.add({
  proto: 'tcp', listen, target: { host: '198.18.1.2', port: 80 }, connectTimeoutMs: 300,
});
const attempt = (port) => new Promise((resolve) => {
  const start = Date.now();
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.on('close', () => resolve(Date.now() - start));
});
const ms = [await attempt(unreachable.listen.port), await attempt(hole.listen.port)];
for (let i = 0; i < 100 && events.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
const failedBy = [proxy.stats(unreachable), proxy.stats(hole)].map((s) => s.connections.failedBy);
console.log('RESULT ' + JSON.stringify({ ms, events, failedBy }));
await proxy.close();
`;

// In a namespace of its own, so that no other program on the machine can start listening on
// the closed target port during the 3000 connections: the clients run on a thread of their
// own, so that the main thread can be blocked; the engine's threads accept and fail every
// connection meanwhile, and nothing reads their events.
const BOUNDED_CHILD = `
import { Worker } from 'node:worker_threads';
import { createProxy } from ${JSON.stringify(DIST_URL)};
const TOTAL = Number(process.argv[1]);
const proxy = createProxy({ engine: 'splice' });
const batches = [];
proxy.on('events', (batch) => batches.push(batch));
const m = await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: 1 } });
const done = new SharedArrayBuffer(4);
const worker = new Worker(\`
  import net from 'node:net';
  import { workerData } from 'node:worker_threads';
  let started = 0, closed = 0;
  const flag = new Int32Array(workerData.done);
  const next = () => {
    if (started >= workerData.total) return;
    started++;
    const s = net.connect(workerData.port, '127.0.0.1');
    s.on('error', () => {});
    s.on('close', () => {
      if (++closed === workerData.total) { Atomics.store(flag, 0, 1); Atomics.notify(flag, 0); }
      else next();
    });
  };
  for (let i = 0; i < 32; i++) next();
\`, { eval: true, workerData: { port: m.listen.port, total: TOTAL, done } });
const rss = process.memoryUsage().rss;
const waited = Atomics.wait(new Int32Array(done), 0, 0, 45000);
const count = () => batches.reduce((n, b) => n + b.events.length + b.dropped, 0);
for (let i = 0; i < 250 && count() < TOTAL; i++) await new Promise((r) => setTimeout(r, 20));
const s = proxy.stats(m);
console.log('RESULT ' + JSON.stringify({
  waited,
  batches: batches.length,
  events: batches.reduce((n, b) => n + b.events.length, 0),
  dropped: batches.reduce((n, b) => n + b.dropped, 0),
  failedBy: s.connections.failedBy,
  mappingDropped: s.events.dropped,
  rssGrowth: process.memoryUsage().rss - rss,
}));
await worker.terminate();
await proxy.close();
`;

describe('bounded with nobody reading', () => {
  test(
    'splice: 3000 failures while JavaScript is blocked keep 1024 events and count the rest',
    { skip: namespaceSkipReason() ?? false, timeout: 70000 },
    async (t) => {
      const TOTAL = 3000;
      const child = spawnInNamespace([], BOUNDED_CHILD, [TOTAL]);
      const result = JSON.parse((await child.waitLine(/^RESULT (.*)$/, 60000))[1]);
      await child.waitExit(10000);
      const what = show(result);
      t.diagnostic(`rss ${(result.rssGrowth / 1048576).toFixed(1)} MiB above the start: ${what}`);
      assert.equal(result.waited, 'ok', `the clients finished within 45 s: ${what}`);
      assert.equal(result.events, EVENT_QUEUE_CAPACITY, `the queue kept its capacity and no more: ${what}`);
      assert.equal(result.dropped, TOTAL - EVENT_QUEUE_CAPACITY, what);
      assert.deepEqual(result.failedBy, { refused: TOTAL, timeout: 0, unreachable: 0, other: 0 }, what);
      assert.equal(
        result.mappingDropped,
        TOTAL - EVENT_QUEUE_CAPACITY,
        `the drops counted on the mapping: ${what}`,
      );
    },
  );

  test('stream: the same queue rules, in JavaScript', () => {
    let notified = 0;
    const queue = new EventQueue();
    assert.equal(queue.push({ kind: 'targetFailure', mapping: 1, errno: -111 }), false, 'off until watched');
    queue.watch(() => notified++);
    for (let i = 0; i < 3000; i++)
      queue.push({ kind: 'targetFailure', mapping: 1, reason: 'refused', errno: -111 });
    assert.equal(notified, 1, 'one notification for the batch');
    const batch = queue.take();
    assert.equal(batch.events.length, EVENT_QUEUE_CAPACITY);
    assert.equal(batch.dropped, 3000 - EVENT_QUEUE_CAPACITY);
    assert.deepEqual(queue.take(), { events: [], dropped: 0 });
    queue.push({ kind: 'targetFailure', mapping: 1, reason: 'refused', errno: -111 });
    assert.equal(notified, 2, 'notified again after a take');
    queue.watch(undefined);
    assert.deepEqual(queue.take(), { events: [], dropped: 0 }, 'unwatching drops the queue');
  });
});

describe('the portsplice command', () => {
  test(
    'logs a refused target once per window with the addresses, then the count of the rest',
    { timeout: 30000 },
    async () => {
      const [listen, closed] = [await freePort(), await closedPort()];
      const child = spawnChild(process.execPath, [CLI_PATH, '-p', `${V4}:${listen}:${V4}:${closed}`]);
      await child.waitLine(/started .* forwarding 1 mapping/, 10000);
      const clients = [];
      for (let i = 0; i < 20; i++) clients.push(await failingConnection(listen));
      const line = await child.waitLine(
        /^portsplice: mapping 1 (\S+): target (\S+) refused the connection \(ECONNREFUSED\) for client (\S+)$/,
        5000,
      );
      assert.deepEqual(line.slice(1, 3), [`${V4}:${listen}`, `${V4}:${closed}`], child.out);
      // One of the clients (the first to fail: with threads 'auto' on a busy machine a second
      // engine thread may take some connections, and their failures need not come in order).
      assert.ok(clients.map((p) => `${V4}:${p}`).includes(line[3]), `${line[3]} is a client: ${child.out}`);
      child.kill('SIGTERM');
      await child.waitClosed(10000);
      const refusedLines = child.lines.filter((l) => l.includes('refused the connection'));
      assert.equal(refusedLines.length, 1, `one line for 20 failures: ${child.out}`);
      assert.ok(
        child.lines.some((l) => /mapping 1: target refused: 19 more within 10 s/.test(l)),
        `the rest counted: ${child.out}`,
      );
    },
  );
});
