// @test-tag slow: about 30 s of bulk transfers
// Byte-exact forwarding (echo and independent streams, 0 B to 64 MiB), 1000 concurrent
// connections, exact stats accounting, backpressure, IPv6, host names, threads: 2 and the
// splice engine's copy fallback (small pipes, maxPipes).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  V6,
  KiB,
  MiB,
  sha256,
  randomPayload,
  withTimeout,
  startServer,
  startEchoServer,
  startDualEchoServer,
  startStreamServer,
  expectRefused,
  mappingOptions,
  sleep,
  exchange,
  connect,
  collect,
  openConnections,
  addMapping,
  statsOf,
  waitStats,
  waitIdle,
  waitFor,
  safeRemove,
  safeClose,
  closeServers,
  checkByteInvariants,
  show,
} from './helpers.mjs';

const SIZES = [0, 1, 1000, 65536 + 17, 1 * MiB, 64 * MiB];

/** Per-size time budget for one transfer. */
const budget = (size) => (size >= 64 * MiB ? 60000 : 10000);

/** Assert the final counters of a mapping after all its connections are done. */
async function checkFinalStats(engine, proxy, m, { accepted, toTarget, toClient }) {
  const st = await waitIdle(proxy, m);
  assert.equal(st.connections.accepted, accepted, `connections.accepted (${show(st.connections)})`);
  assert.equal(st.connections.active, 0, 'connections.active');
  assert.equal(st.connections.failed, 0, 'connections.failed');
  assert.equal(st.bytes.toTarget, BigInt(toTarget), `bytes.toTarget (${show(st.bytes)})`);
  assert.equal(st.bytes.toClient, BigInt(toClient), `bytes.toClient (${show(st.bytes)})`);
  checkByteInvariants(assert, engine, st);
  if (engine === 'splice' && toTarget + toClient >= 2 * MiB) {
    assert.ok(st.bytes.spliced > 0n, `the splice engine moved bytes with splice(2) (${show(st.bytes)})`);
  }
  return st;
}

for (const engine of ENGINES) {
  describe(`forwarding [${engine}]`, () => {
    let proxy;
    let echo;
    let echo6;

    before(async () => {
      echo = await startEchoServer({ host: V4 });
      echo6 = await startEchoServer({ host: V6 });
      proxy = createProxy({ engine, threads: 1 });
    });

    after(async () => {
      await safeClose(proxy);
      await closeServers(echo, echo6);
    });

    test('createProxy reports the engine and add() reports the mapping', async (t) => {
      assert.equal(proxy.engine, engine);
      assert.equal(proxy.closed, false);
      assert.equal(proxy.stats().engine, engine);
      const m = await addMapping(proxy, echo.port);
      t.after(() => safeRemove(proxy, m));
      assert.equal(typeof m.id, 'number');
      assert.equal(m.proto, 'tcp');
      assert.equal(m.listen.host, V4);
      assert.ok(
        Number.isInteger(m.listen.port) && m.listen.port > 0 && m.listen.port < 65536,
        `bound port ${m.listen.port}`,
      );
      assert.deepEqual({ ...m.target }, { host: V4, port: echo.port });
      const st = statsOf(proxy, m);
      assert.ok(st, 'the mapping appears in stats()');
      assert.equal(st.proto, 'tcp');
      assert.deepEqual({ ...st.listen }, { host: V4, port: m.listen.port });
      assert.deepEqual({ ...st.target }, { host: V4, port: echo.port });
      const { accepted, active, failed } = st.connections;
      assert.deepEqual({ accepted, active, failed }, { accepted: 0, active: 0, failed: 0 });
      const { toTarget, toClient, spliced, copied } = st.bytes;
      assert.deepEqual(
        { toTarget, toClient, spliced, copied },
        { toTarget: 0n, toClient: 0n, spliced: 0n, copied: 0n },
      );
    });

    for (const size of SIZES) {
      test(
        `echo target: ${size} bytes forwarded byte-exact both ways`,
        { timeout: budget(size) + 20000 },
        async (t) => {
          const m = await addMapping(proxy, echo.port);
          t.after(() => safeRemove(proxy, m));
          const payload = randomPayload(size);
          const got = await exchange(m.listen.port, V4, payload, { timeout: budget(size) });
          assert.equal(got.bytes, size, 'echoed byte count');
          assert.equal(got.sha256, sha256(payload), 'echoed sha256');
          await checkFinalStats(engine, proxy, m, { accepted: 1, toTarget: size, toClient: size });
        },
      );

      test(
        `independent streams: ${size} bytes each way concurrently`,
        { timeout: budget(size) + 20000 },
        async (t) => {
          // The target sends its own random stream while receiving the client's one.
          const fromServer = randomPayload(size);
          const server = await startStreamServer(fromServer);
          const m = await addMapping(proxy, server.port);
          t.after(() => safeRemove(proxy, m));
          t.after(() => closeServers(server));
          const fromClient = randomPayload(size);
          const got = await exchange(m.listen.port, V4, fromClient, { timeout: budget(size) });
          assert.equal(got.bytes, size, 'bytes received by the client');
          assert.equal(got.sha256, sha256(fromServer), 'sha256 of what the client received');
          await waitFor(() => server.results.length === 1, { timeout: 5000, what: 'target saw the FIN' });
          assert.equal(server.results[0].bytes, size, 'bytes received by the target');
          assert.equal(server.results[0].sha256, sha256(fromClient), 'sha256 of what the target received');
          await checkFinalStats(engine, proxy, m, { accepted: 1, toTarget: size, toClient: size });
        },
      );
    }

    test('asymmetric sizes: client sends 3 MiB+5, target sends 257 bytes', { timeout: 30000 }, async (t) => {
      const fromServer = randomPayload(257);
      const server = await startStreamServer(fromServer);
      const m = await addMapping(proxy, server.port);
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeServers(server));
      const fromClient = randomPayload(3 * MiB + 5);
      const got = await exchange(m.listen.port, V4, fromClient);
      assert.equal(got.sha256, sha256(fromServer));
      await waitFor(() => server.results.length === 1, { timeout: 5000, what: 'target saw the FIN' });
      assert.equal(server.results[0].sha256, sha256(fromClient));
      await checkFinalStats(engine, proxy, m, { accepted: 1, toTarget: fromClient.length, toClient: 257 });
    });

    test('1000 concurrent connections, each exchanging a small payload', { timeout: 40000 }, async (t) => {
      const N = 1000;
      const m = await addMapping(proxy, echo.port);
      let sockets = [];
      t.after(async () => {
        for (const s of sockets) s.destroy();
        await safeRemove(proxy, m);
      });
      sockets = await openConnections(N, m.listen.port, V4, { timeout: 15000 });
      // All of them are open at once: the proxy must see them all as active.
      const open = await waitStats(
        proxy,
        m,
        (s) => s.connections.accepted === N && s.connections.active === N,
        `accepted === active === ${N}`,
        10000,
      );
      assert.equal(open.connections.failed, 0);

      const payloads = sockets.map((_, i) =>
        Buffer.concat([Buffer.from(`conn ${i}:`), randomBytes(64 + (i % 200))]),
      );
      const results = await withTimeout(
        Promise.all(
          sockets.map((s, i) => {
            const p = collect(s, { keep: true });
            s.end(payloads[i]);
            return p;
          }),
        ),
        20000,
        `${N} echo exchanges`,
      );
      let total = 0;
      results.forEach((r, i) => {
        assert.ok(r.data.equals(payloads[i]), `connection ${i} got its own payload back`);
        total += payloads[i].length;
      });
      await checkFinalStats(engine, proxy, m, { accepted: N, toTarget: total, toClient: total });
    });

    test('IPv6: listen on ::1, target ::1', { timeout: 30000 }, async (t) => {
      const m = await addMapping(proxy, echo6.port, { listenHost: V6, targetHost: V6 });
      t.after(() => safeRemove(proxy, m));
      assert.equal(m.listen.host, V6);
      assert.ok(m.listen.port > 0);
      assert.deepEqual({ ...m.target }, { host: V6, port: echo6.port });
      const payload = randomPayload(2 * MiB + 3);
      const got = await exchange(m.listen.port, V6, payload);
      assert.equal(got.bytes, payload.length);
      assert.equal(got.sha256, sha256(payload));
      const before = echo6.connectionCount;
      const got2 = await exchange(m.listen.port, V6, Buffer.from('v6 only'), { keep: true });
      assert.equal(got2.data.toString(), 'v6 only');
      assert.equal(echo6.connectionCount, before + 1, 'the IPv6 target server received the connection');
      await checkFinalStats(engine, proxy, m, {
        accepted: 2,
        toTarget: payload.length + 7,
        toClient: payload.length + 7,
      });
    });

    test('IPv6 listen ::1 with an IPv4 target 127.0.0.1', { timeout: 30000 }, async (t) => {
      const m = await addMapping(proxy, echo.port, { listenHost: V6, targetHost: V4 });
      t.after(() => safeRemove(proxy, m));
      assert.equal(m.listen.host, V6);
      const before = echo.connectionCount;
      const payload = randomPayload(1 * MiB + 11);
      const got = await exchange(m.listen.port, V6, payload);
      assert.equal(got.bytes, payload.length);
      assert.equal(got.sha256, sha256(payload));
      assert.equal(echo.connectionCount, before + 1, 'the IPv4 target server received the connection');
      await checkFinalStats(engine, proxy, m, {
        accepted: 1,
        toTarget: payload.length,
        toClient: payload.length,
      });
    });

    test(
      'stats() during a transfer: counters only grow and never exceed what was sent',
      { timeout: 40000 },
      async (t) => {
        const m = await addMapping(proxy, echo.port);
        t.after(() => safeRemove(proxy, m));
        const size = 16 * MiB;
        const payload = randomPayload(size);
        let done = false;
        const transfer = exchange(m.listen.port, V4, payload, { timeout: 30000 }).finally(
          () => (done = true),
        );
        const fields = ['toTarget', 'toClient', 'spliced', 'copied'];
        let prev;
        let samples = 0;
        while (!done) {
          const st = statsOf(proxy, m);
          assert.ok(st, 'the mapping is in stats() while it forwards');
          assert.ok(st.connections.accepted <= 1 && st.connections.active <= 1, show(st.connections));
          assert.ok(st.bytes.toTarget <= BigInt(size), `toTarget ${st.bytes.toTarget} <= ${size}`);
          assert.ok(st.bytes.toClient <= BigInt(size), `toClient ${st.bytes.toClient} <= ${size}`);
          if (prev) {
            for (const f of fields) assert.ok(st.bytes[f] >= prev.bytes[f], `bytes.${f} never decreases`);
            assert.ok(st.connections.accepted >= prev.connections.accepted, 'accepted never decreases');
          }
          prev = st;
          samples++;
          await sleep(1);
        }
        const got = await transfer;
        assert.equal(got.sha256, sha256(payload));
        assert.ok(samples > 1, 'stats were sampled during the transfer');
        await checkFinalStats(engine, proxy, m, { accepted: 1, toTarget: size, toClient: size });
      },
    );

    test(
      'unref() and ref() return the proxy and do not disturb forwarding',
      { timeout: 15000 },
      async (t) => {
        const m = await addMapping(proxy, echo.port);
        t.after(async () => {
          proxy.ref();
          await safeRemove(proxy, m);
        });
        assert.equal(proxy.unref(), proxy, 'unref() returns the proxy');
        const payload = randomPayload(256 * KiB);
        const got = await exchange(m.listen.port, V4, payload);
        assert.equal(got.sha256, sha256(payload), 'forwards while unref()ed');
        const m2 = await addMapping(proxy, echo.port); // add() still works while unref()ed
        try {
          await exchange(m2.listen.port, V4, Buffer.from('x'));
        } finally {
          await safeRemove(proxy, m2);
        }
        assert.equal(proxy.ref(), proxy, 'ref() returns the proxy');
        const got2 = await exchange(m.listen.port, V4, payload);
        assert.equal(got2.sha256, sha256(payload), 'forwards after ref()');
      },
    );

    test('host names are resolved once when the mapping is added', { timeout: 30000 }, async (t) => {
      const dual = await startDualEchoServer();
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => dual.close());
      m = await withTimeout(
        proxy.add({
          proto: 'tcp',
          listen: { host: 'localhost', port: 0 },
          target: { host: 'localhost', port: dual.port },
        }),
        10000,
        'add with host names',
      );
      assert.ok(
        [V4, V6].includes(m.listen.host),
        `listen.host is the resolved address, got ${m.listen.host}`,
      );
      assert.ok(
        [V4, V6].includes(m.target.host),
        `target.host is the resolved address, got ${m.target.host}`,
      );
      assert.equal(m.target.port, dual.port);
      const st = statsOf(proxy, m);
      assert.equal(st.listen.host, m.listen.host);
      assert.equal(st.target.host, m.target.host);
      const payload = randomPayload(100 * KiB + 1);
      const got = await exchange(m.listen.port, m.listen.host, payload);
      assert.equal(got.sha256, sha256(payload));
      const reached = m.target.host === V4 ? dual.v4 : dual.v6;
      assert.equal(reached.connectionCount, 1, 'the connection went to the resolved target address');
    });

    test('several mappings at once keep separate counters', { timeout: 30000 }, async (t) => {
      const a = await addMapping(proxy, echo.port);
      const b = await addMapping(proxy, echo.port);
      t.after(() => safeRemove(proxy, a));
      t.after(() => safeRemove(proxy, b));
      assert.notEqual(a.id, b.id);
      assert.notEqual(a.listen.port, b.listen.port);
      const pa = randomPayload(100 * KiB);
      const pb = randomPayload(33);
      const [ra, rb] = await Promise.all([exchange(a.listen.port, V4, pa), exchange(b.listen.port, V4, pb)]);
      assert.equal(ra.sha256, sha256(pa));
      assert.equal(rb.sha256, sha256(pb));
      await checkFinalStats(engine, proxy, a, { accepted: 1, toTarget: pa.length, toClient: pa.length });
      await checkFinalStats(engine, proxy, b, { accepted: 1, toTarget: pb.length, toClient: pb.length });
    });

    test('backpressure: slow readers on both sides still get every byte', { timeout: 40000 }, async (t) => {
      const fromServer = randomPayload(16 * MiB + 1);
      const fromClient = randomPayload(16 * MiB + 3);
      let serverResult;
      const server = await startServer((sock) => {
        const h = createHash('sha256');
        let n = 0;
        sock.pause(); // the target does not read for a while: the proxy must hold the data back
        setTimeout(() => sock.resume(), 400);
        sock.on('data', (c) => {
          h.update(c);
          n += c.length;
        });
        sock.on('end', () => (serverResult = { sha256: h.digest('hex'), bytes: n }));
        sock.end(fromServer);
      });
      const m = await addMapping(proxy, server.port);
      let client;
      t.after(() => client?.destroy());
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeServers(server));
      client = await connect(m.listen.port);
      client.pause(); // nor does the client
      const got = collect(client);
      let sincePause = 0;
      client.on('data', (c) => {
        sincePause += c.length;
        if (sincePause >= 2 * MiB) {
          sincePause = 0;
          client.pause();
          setTimeout(() => client.resume(), 50);
        }
      });
      client.end(fromClient);
      await sleep(400);
      client.resume();
      const res = await withTimeout(got, 30000, 'slow client receives everything');
      assert.equal(res.bytes, fromServer.length);
      assert.equal(res.sha256, sha256(fromServer));
      await waitFor(() => serverResult, { timeout: 10000, what: 'slow target receives everything' });
      assert.equal(serverResult.bytes, fromClient.length);
      assert.equal(serverResult.sha256, sha256(fromClient));
      await checkFinalStats(engine, proxy, m, {
        accepted: 1,
        toTarget: fromClient.length,
        toClient: fromServer.length,
      });
    });

    test(
      '50 mappings added concurrently get distinct ids and ports and all forward',
      { timeout: 30000 },
      async (t) => {
        const N = 50;
        const settled = await withTimeout(
          Promise.allSettled(Array.from({ length: N }, () => proxy.add(mappingOptions(echo.port)))),
          10000,
          `${N} concurrent add() calls`,
        );
        const maps = settled.filter((x) => x.status === 'fulfilled').map((x) => x.value);
        t.after(async () => {
          for (const m of maps) await safeRemove(proxy, m);
        });
        const rejected = settled.filter((x) => x.status === 'rejected');
        assert.equal(
          rejected.length,
          0,
          `rejected adds: ${rejected.map((x) => x.reason?.message).join('; ')}`,
        );
        assert.equal(new Set(maps.map((m) => m.id)).size, N, 'distinct ids');
        assert.equal(new Set(maps.map((m) => m.listen.port)).size, N, 'distinct ports');
        const texts = maps.map((_, i) => `mapping number ${i}`);
        const results = await withTimeout(
          Promise.all(maps.map((m, i) => exchange(m.listen.port, V4, Buffer.from(texts[i]), { keep: true }))),
          15000,
          'one exchange per mapping',
        );
        results.forEach((r, i) => assert.equal(r.data.toString(), texts[i]));
        for (const [i, m] of maps.entries()) {
          await checkFinalStats(engine, proxy, m, {
            accepted: 1,
            toTarget: texts[i].length,
            toClient: texts[i].length,
          });
        }
        await withTimeout(
          Promise.all(maps.map((m) => proxy.remove(m))),
          10000,
          `${N} concurrent remove() calls`,
        );
        for (const m of maps) await expectRefused(m.listen.port, V4, `port of removed mapping ${m.id}`);
      },
    );
  });

  describe(`threads: 2 [${engine}]`, () => {
    let proxy;
    let echo;

    before(async () => {
      echo = await startEchoServer();
      proxy = createProxy({ engine, threads: 2 });
    });

    after(async () => {
      await safeClose(proxy);
      await closeServers(echo);
    });

    test('forwards many concurrent connections byte-exact', { timeout: 60000 }, async (t) => {
      assert.equal(proxy.engine, engine);
      const m = await addMapping(proxy, echo.port);
      t.after(() => safeRemove(proxy, m));
      const N = 64;
      const payloads = Array.from({ length: N }, (_, i) =>
        randomPayload(i % 4 === 0 ? 1 * MiB + i : 4 * KiB + i),
      );
      const results = await withTimeout(
        Promise.all(payloads.map((p) => exchange(m.listen.port, V4, p, { timeout: 30000 }))),
        40000,
        `${N} concurrent exchanges`,
      );
      let total = 0;
      results.forEach((r, i) => {
        assert.equal(r.sha256, sha256(payloads[i]), `connection ${i} echoed byte-exact`);
        total += payloads[i].length;
      });
      await checkFinalStats(engine, proxy, m, { accepted: N, toTarget: total, toClient: total });
    });

    test('a second mapping on the same proxy also works', { timeout: 30000 }, async (t) => {
      const a = await addMapping(proxy, echo.port);
      const b = await addMapping(proxy, echo.port, { listenHost: V6 });
      let sa;
      let sb;
      t.after(() => sa?.destroy());
      t.after(() => sb?.destroy());
      t.after(() => safeRemove(proxy, a));
      t.after(() => safeRemove(proxy, b));
      sa = await connect(a.listen.port, V4);
      sb = await connect(b.listen.port, V6);
      const ra = collect(sa, { keep: true });
      const rb = collect(sb, { keep: true });
      sa.end('alpha');
      sb.end('bravo');
      const [xa, xb] = await withTimeout(Promise.all([ra, rb]), 10000, 'two echoes');
      assert.equal(xa.data.toString(), 'alpha');
      assert.equal(xb.data.toString(), 'bravo');
    });
  });

  describe(`small pipes and a pipe limit (copy fallback) [${engine}]`, () => {
    let proxy;

    before(() => {
      // At most one pipe per thread: concurrent transfers beyond it are copied through user space.
      proxy = createProxy({ engine, threads: 1, pipeSize: 4096, maxPipes: 1 });
    });

    after(async () => {
      await safeClose(proxy);
    });

    test('concurrent transfers stay byte-exact and fully accounted', { timeout: 60000 }, async (t) => {
      const N = 8;
      const size = 2 * MiB + 5;
      const fromServer = randomPayload(size);
      const server = await startStreamServer(fromServer);
      const m = await addMapping(proxy, server.port);
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeServers(server));
      const fromClients = Array.from({ length: N }, () => randomPayload(size));
      const results = await withTimeout(
        Promise.all(fromClients.map((p) => exchange(m.listen.port, V4, p, { timeout: 30000 }))),
        40000,
        `${N} concurrent transfers`,
      );
      for (const r of results) assert.equal(r.sha256, sha256(fromServer), 'client received byte-exact');
      await waitFor(() => server.results.length === N, { timeout: 10000, what: 'target saw every FIN' });
      const expected = new Set(fromClients.map((p) => sha256(p)));
      for (const r of server.results) {
        assert.equal(r.bytes, size);
        assert.ok(expected.has(r.sha256), 'target received one client payload byte-exact');
      }
      const st = await checkFinalStats(engine, proxy, m, {
        accepted: N,
        toTarget: N * size,
        toClient: N * size,
      });
      if (engine === 'splice') {
        assert.ok(st.bytes.copied > 0n, `transfers beyond maxPipes were copied (${show(st.bytes)})`);
      }
    });
  });
}
