// @test-tag timing: idle timeouts measured against the clock, connections held for whole timeouts
// idleTimeoutMs: a connection with no byte moving in either direction for that long is reset
// (RST to both sides). Bytes in one direction only keep it open; a half-open connection (one
// side sent FIN, the other idles) follows the same rule. Both engines.
//
// Lower bounds are strict. The clock is read here before the last byte is sent, so the
// proxy's last activity is later than that; the engines keep time in whole milliseconds
// (the splice engine's loop clock, libuv's loop time for Node's timers), which can make the
// reset come up to 1 ms before the timeout measured with a finer clock: hence `TIMEOUT - 1`.
// Upper bounds are generous, for a loaded machine.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';

import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  sleep,
  startServer,
  startEchoServer,
  connect,
  pingEcho,
  addMapping,
  statsOf,
  waitStats,
  waitFor,
  withTimeout,
  safeClose,
  closeServers,
} from './helpers.mjs';

const TIMEOUT = 600;
const SLACK = 3000;

/** A target that keeps each accepted socket in `sockets` and does nothing with it. */
async function startSilentServer() {
  const accepted = [];
  const server = await startServer((socket) => {
    socket.received = 0;
    socket.on('data', (d) => (socket.received += d.length));
    accepted.push(socket);
  });
  server.accepted = accepted;
  return server;
}

/**
 * Waits for the proxy to close `socket` (a reset, or a close; a FIN alone does not count: a
 * half-open connection stays open). Returns how, and the ms since `since`.
 */
async function closedBy(socket, since, what) {
  socket.resume();
  const how = await withTimeout(
    new Promise((resolve) => {
      if (socket.errors.length > 0) resolve({ how: 'error', error: socket.errors[0] });
      else if (socket.destroyed) resolve({ how: 'close' });
      socket.once('error', (error) => resolve({ how: 'error', error }));
      socket.once('close', () => resolve({ how: 'close', error: socket.errors[0] }));
    }),
    TIMEOUT + SLACK + 2000,
    what,
  );
  if (how.error) how.how = 'error';
  return { ...how, ms: performance.now() - since };
}

/** The target's side of the first connection, once it has been accepted. */
function upstreamOf(target) {
  return waitFor(() => target.accepted[0], { what: 'the target accepted the connection' });
}

/** Writes a byte every 20 ms until a write fails (at most 1 s); returns the error and the writes. */
async function writeUntilError(socket) {
  for (let writes = 1; writes <= 50; writes++) {
    const error = await new Promise((resolve) => socket.write('z', (e) => resolve(e)));
    await sleep(20);
    const seen = error ?? socket.errors[0];
    if (seen) return { error: seen, writes };
  }
  throw new Error('50 writes after the idle timeout succeeded');
}

function assertReset(how, what) {
  assert.equal(how.how, 'error', `${what}: a reset expected, got ${how.how}`);
  assert.equal(how.error.code, 'ECONNRESET', what);
}

function assertWithin(ms, what) {
  assert.ok(ms >= TIMEOUT - 1, `${what}: closed after ${ms.toFixed(1)} ms, before the ${TIMEOUT} ms timeout`);
  assert.ok(ms < TIMEOUT + SLACK, `${what}: closed after ${ms.toFixed(1)} ms`);
}

for (const engine of ENGINES) {
  describe(`idleTimeoutMs [${engine}]`, () => {
    test('an idle connection is reset on both sides after the timeout, and counted', async (t) => {
      const target = await startSilentServer();
      const proxy = createProxy({ engine });
      t.after(() => Promise.all([safeClose(proxy), closeServers(target)]));
      const m = await addMapping(proxy, target.port, { idleTimeoutMs: TIMEOUT });
      const client = await connect(m.listen.port);
      const since = performance.now();
      client.write('x');
      await waitStats(proxy, m, (s) => s.bytes.toTarget === 1n, 'the byte forwarded');
      const upstream = await upstreamOf(target);
      const [down, up] = await Promise.all([
        closedBy(client, since, 'client side'),
        closedBy(upstream, since, 'target side'),
      ]);
      assertReset(down, 'client');
      assertReset(up, 'target');
      assertWithin(down.ms, 'client');
      const s = await waitStats(proxy, m, (x) => x.connections.active === 0, 'closed');
      assert.equal(s.connections.idleClosed, 1);
      assert.equal(s.connections.limitReached, 0, 'no maxConnections: no limit to reach');
    });

    test('traffic every half timeout keeps a connection open for several timeouts', async (t) => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      t.after(() => Promise.all([safeClose(proxy), closeServers(echo)]));
      const m = await addMapping(proxy, echo.port, { idleTimeoutMs: TIMEOUT });
      const client = await connect(m.listen.port);
      const start = performance.now();
      while (performance.now() - start < 5 * TIMEOUT) {
        await pingEcho(client, Buffer.from('tick\n'));
        await sleep(TIMEOUT / 2);
      }
      assert.deepEqual(client.errors, []);
      assert.equal(statsOf(proxy, m).connections.idleClosed, 0);
      // Then silence closes it.
      const since = performance.now();
      await pingEcho(client, Buffer.from('last\n'));
      const how = await closedBy(client, since, 'after the last tick');
      assertReset(how, 'client');
      assert.ok(how.ms < TIMEOUT + SLACK, `closed after ${how.ms} ms`);
    });

    for (const quiet of ['client', 'target']) {
      const talker = quiet === 'client' ? 'target' : 'client';
      test(`bytes from the ${talker} alone keep it open; an idle ${quiet} alone does not close it`, async (t) => {
        const target = await startSilentServer();
        const proxy = createProxy({ engine });
        t.after(() => Promise.all([safeClose(proxy), closeServers(target)]));
        const m = await addMapping(proxy, target.port, { idleTimeoutMs: TIMEOUT });
        const client = await connect(m.listen.port);
        client.write('hello');
        await waitStats(proxy, m, (s) => s.bytes.toTarget === 5n, 'hello forwarded');
        const upstream = await upstreamOf(target);
        const from = talker === 'client' ? client : upstream;
        const start = performance.now();
        let last = start;
        while (performance.now() - start < 4 * TIMEOUT) {
          last = performance.now();
          from.write('.');
          await sleep(TIMEOUT / 2);
        }
        assert.deepEqual(client.errors, [], 'client still open');
        assert.deepEqual(upstream.errors, [], 'target still open');
        const [down, up] = await Promise.all([
          closedBy(client, last, 'client side'),
          closedBy(upstream, last, 'target side'),
        ]);
        assertReset(down, 'client');
        assertReset(up, 'target');
        assertWithin(Math.min(down.ms, up.ms), `${talker} went quiet`);
        assert.equal(statsOf(proxy, m).connections.idleClosed, 1);
      });
    }

    for (const closer of ['client', 'target']) {
      const idler = closer === 'client' ? 'target' : 'client';
      test(`half-open: the ${closer} sent FIN, the ${idler} idles: reset after the timeout`, async (t) => {
        const target = await startSilentServer();
        const proxy = createProxy({ engine });
        t.after(() => Promise.all([safeClose(proxy), closeServers(target)]));
        const m = await addMapping(proxy, target.port, { idleTimeoutMs: TIMEOUT });
        const client = await connect(m.listen.port);
        // The clock runs from the last byte; a FIN does not restart it.
        const since = performance.now();
        client.write('a');
        await waitStats(proxy, m, (s) => s.bytes.toTarget === 1n, 'byte forwarded');
        const upstream = await upstreamOf(target);
        const finishing = closer === 'client' ? client : upstream;
        const idle = closer === 'client' ? upstream : client;
        const gotFin = new Promise((resolve) => idle.once('end', resolve));
        idle.resume();
        finishing.end();
        await gotFin; // The FIN was forwarded: the connection is half-open.
        // The side that sent FIN still reads, and sees the reset.
        const how = await closedBy(finishing, since, `${closer} after its FIN`);
        assertReset(how, closer);
        assertWithin(how.ms, closer);
        // The side that got the FIN has stopped reading (libuv stops at the end of the stream,
        // so it cannot see a reset arrive): its next writes fail.
        // (Both resets leave in one engine call, but this process may see the first before the
        // engine thread has sent the second: give it a moment.)
        await sleep(100);
        const failed = await writeUntilError(idle);
        if (engine === 'splice') {
          // A socket in CLOSE_WAIT takes writes; only the reset makes the first one fail.
          assert.equal(failed.writes, 1, `${idler}: the reset was there before the first write`);
          assert.ok(['ECONNRESET', 'EPIPE'].includes(failed.error.code), failed.error.code);
        } else {
          // libuv cannot reset a socket whose write side it shut down (src/stream-tcp.ts): the
          // proxy closes it, and the kernel answers the idle side's next segment with a reset.
          assert.ok(['ECONNRESET', 'EPIPE'].includes(failed.error.code), failed.error.code);
        }
        assert.equal(statsOf(proxy, m).connections.idleClosed, 1);
      });
    }
  });
}

describe('idleTimeoutMs validation', () => {
  const proxy = createProxy({ engine: 'stream' });
  test('rejected on UDP, with the reason', async () => {
    await assert.rejects(
      proxy.add({
        proto: 'udp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: 9 },
        idleTimeoutMs: 1000,
      }),
      { name: 'TypeError', message: /idleTimeoutMs applies to TCP mappings only.*udpTimeoutMs/ },
    );
  });
  test('a positive integer, naming the field', async () => {
    for (const bad of [0, -5, 2.5]) {
      await assert.rejects(
        proxy.add({
          proto: 'tcp',
          listen: { host: V4, port: 0 },
          target: { host: V4, port: 9 },
          idleTimeoutMs: bad,
        }),
        { name: 'RangeError', message: /^idleTimeoutMs must be an integer from 1 to 2147483647/ },
      );
    }
  });
  test('cleanup', () => proxy.close());
});
