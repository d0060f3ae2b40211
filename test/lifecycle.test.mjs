// @test-tag slow: about 15 s
// Connection and mapping lifecycle: half-close both ways, refused / silent / slow targets
// (connectTimeoutMs), resets forwarded in both directions, remove/close with live and
// in-flight connections, port reuse, descriptor leaks, EADDRINUSE and option validation.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { readdirSync } from 'node:fs';

import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  V6,
  KiB,
  MiB,
  sleep,
  sha256,
  randomPayload,
  withTimeout,
  waitFor,
  startServer,
  startEchoServer,
  freePort,
  connect,
  collect,
  exchange,
  expectRefused,
  waitClose,
  waitError,
  waitPeerClosed,
  openConnections,
  pingEcho,
  mappingOptions,
  addMapping,
  waitStats,
  waitIdle,
  safeRemove,
  safeClose,
  closeServers,
  checkByteInvariants,
  show,
} from './helpers.mjs';

/** A quick proof that a mapping forwards: echo a short message through it. */
async function assertForwards(port, host = V4, text = 'still alive') {
  const got = await exchange(port, host, Buffer.from(text), { timeout: 5000, keep: true });
  assert.equal(got.data.toString(), text, `echo through ${host}:${port}`);
}

/** Assert `fn()` throws or rejects with a TypeError/RangeError whose message names `field`. */
async function expectBadOption(fn, field) {
  await assert.rejects(
    async () => withTimeout(fn(), 5000, `validation of ${field}`),
    (err) => {
      assert.ok(
        err instanceof TypeError || err instanceof RangeError,
        `expected a TypeError or RangeError naming ${field}, got ${err?.name}: ${err?.message}`,
      );
      assert.ok(
        err.message.includes(field),
        `error message ${JSON.stringify(err.message)} should name "${field}"`,
      );
      return true;
    },
  );
}

/** Assert createProxy(options) throws synchronously a TypeError/RangeError naming `field`. */
async function expectBadProxyOption(options, field) {
  let proxy;
  let error;
  try {
    proxy = createProxy(options);
  } catch (err) {
    error = err;
  }
  if (proxy) {
    await safeClose(proxy);
    assert.fail(`createProxy(${show(options)}) should throw naming "${field}", but returned a proxy`);
  }
  assert.ok(
    error instanceof TypeError || error instanceof RangeError,
    `expected a TypeError or RangeError naming ${field}, got ${error?.name}: ${error?.message}`,
  );
  assert.ok(
    error.message.includes(field),
    `error message ${JSON.stringify(error.message)} should name "${field}"`,
  );
}

/**
 * A target that does not answer: a listener (backlog 1) in a worker thread whose event loop is
 * blocked, so nobody accepts; once its accept queue is full the kernel drops further SYNs and
 * connects to it hang. `release()` unblocks it; with `echoWhenReleased` it then accepts and
 * echoes (a slow target), otherwise its thread exits. Returns { port, release(), close() }.
 */
async function startBlackhole({ echoWhenReleased = false } = {}) {
  const sab = new SharedArrayBuffer(4);
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads');
    const server = require('node:net').createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      if (workerData.echo) s.pipe(s);
    });
    server.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, () => {
      parentPort.postMessage(server.address().port);
      Atomics.wait(new Int32Array(workerData.sab), 0, 0, 20000); // block: accept nothing
      if (!workerData.echo) process.exit(0);
    });
    `,
    { eval: true, workerData: { sab, echo: echoWhenReleased } },
  );
  worker.on('error', () => {});
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  const fillers = [];
  const release = () => {
    Atomics.store(new Int32Array(sab), 0, 1);
    Atomics.notify(new Int32Array(sab), 0);
    for (const s of fillers) s.destroy();
  };
  const close = async () => {
    release();
    if (echoWhenReleased)
      await withTimeout(worker.terminate(), 5000, 'blackhole worker terminate').catch(() => {});
    else await withTimeout(exited, 5000, 'blackhole worker exit').catch(() => worker.terminate());
  };
  try {
    const port = await withTimeout(
      new Promise((resolve) => worker.once('message', resolve)),
      5000,
      'blackhole listening',
    );
    // Fill the accept queue until a connect hangs.
    let hung = false;
    for (let i = 0; i < 10 && !hung; i++) {
      try {
        fillers.push(await connect(port, V4, { timeout: 300 }));
      } catch (err) {
        if (!/timed out/.test(err.message)) throw err;
        hung = true;
      }
    }
    assert.ok(hung, 'could not make connects to the blackhole hang');
    return { port, release, close };
  } catch (err) {
    await close();
    throw err;
  }
}

for (const engine of ENGINES) {
  describe(`lifecycle [${engine}]`, () => {
    let proxy;
    let echo;

    before(async () => {
      echo = await startEchoServer();
      proxy = createProxy({ engine, threads: 1 });
    });

    after(async () => {
      await safeClose(proxy);
      await closeServers(echo);
    });

    test(
      'half-close: client FIN reaches the target after all request bytes; the response still arrives',
      {
        timeout: 30000,
      },
      async () => {
        const request = randomPayload(300 * KiB + 7);
        const response = randomPayload(2 * MiB + 1);
        let received;
        const server = await startServer((sock) => {
          const h = createHash('sha256');
          let n = 0;
          sock.on('data', (c) => {
            h.update(c);
            n += c.length;
          });
          sock.on('end', async () => {
            received = { sha256: h.digest('hex'), bytes: n };
            await sleep(200); // the client has half-closed: the proxy must keep the other way open
            sock.end(response);
          });
        });
        const m = await addMapping(proxy, server.port);
        let client;
        try {
          client = await connect(m.listen.port);
          const got = collect(client);
          client.write(request);
          client.end();
          const res = await withTimeout(got, 15000, 'response after half-close');
          assert.ok(received, 'target saw the FIN');
          assert.equal(received.bytes, request.length, 'target got every request byte before the FIN');
          assert.equal(received.sha256, sha256(request), 'request sha256 at the target');
          assert.equal(res.bytes, response.length, 'client got the whole response');
          assert.equal(res.sha256, sha256(response), 'response sha256 at the client');
          await waitClose(client, 5000, 'client socket closes after both FINs');
          const st = await waitIdle(proxy, m);
          assert.equal(st.bytes.toTarget, BigInt(request.length));
          assert.equal(st.bytes.toClient, BigInt(response.length));
          checkByteInvariants(assert, engine, st);
        } finally {
          client?.destroy();
          await safeRemove(proxy, m);
          await closeServers(server);
        }
      },
    );

    test(
      'half-close: target FIN first; the client can still send its data afterwards',
      { timeout: 30000 },
      async (t) => {
        const greeting = randomPayload(1 * MiB + 3);
        const upload = randomPayload(500 * KiB + 1);
        let received;
        const server = await startServer((sock) => {
          const h = createHash('sha256');
          let n = 0;
          sock.on('data', (c) => {
            h.update(c);
            n += c.length;
          });
          sock.on('end', () => {
            received = { sha256: h.digest('hex'), bytes: n };
          });
          sock.end(greeting); // target -> client direction closes first
        });
        const m = await addMapping(proxy, server.port);
        let client;
        t.after(() => client?.destroy());
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeServers(server));
        client = await connect(m.listen.port);
        const res = await withTimeout(collect(client), 15000, 'greeting then FIN from the target');
        assert.equal(res.bytes, greeting.length);
        assert.equal(res.sha256, sha256(greeting));
        await sleep(200);
        assert.ok(!client.destroyed, 'client socket still open for writing after the target FIN');
        client.end(upload);
        await waitFor(() => received, { timeout: 10000, what: 'target receives the upload and the FIN' });
        assert.equal(received.bytes, upload.length);
        assert.equal(received.sha256, sha256(upload));
        await waitClose(client, 5000, 'client socket closes after both FINs');
        const st = await waitIdle(proxy, m);
        assert.equal(st.bytes.toTarget, BigInt(upload.length));
        assert.equal(st.bytes.toClient, BigInt(greeting.length));
      },
    );

    test(
      'target refuses: client closed within 2 s, failed counted, proxy keeps serving',
      { timeout: 30000 },
      async (t) => {
        const deadPort = await freePort(V4);
        const dead = await addMapping(proxy, deadPort);
        t.after(() => safeRemove(proxy, dead));
        for (let i = 1; i <= 2; i++) {
          const t0 = Date.now();
          let client;
          let closed;
          try {
            client = await connect(dead.listen.port);
          } catch (err) {
            // The proxy may reset the connection before the client even saw the handshake complete.
            if (err.code !== 'ECONNRESET') throw err;
            closed = { how: 'error', error: err };
          }
          try {
            closed ??= await waitPeerClosed(client, 2000, `connection #${i} to a refusing target is closed`);
            assert.ok(Date.now() - t0 < 2000, `closed within 2 s (took ${Date.now() - t0} ms)`);
            if (closed.error)
              assert.equal(closed.error.code, 'ECONNRESET', `error is a reset: ${closed.error.message}`);
          } finally {
            client?.destroy();
          }
          const st = await waitStats(
            proxy,
            dead,
            (s) => s.connections.failed === i,
            `connections.failed === ${i}`,
            3000,
          );
          assert.equal(st.connections.accepted, i, `accepted (${show(st.connections)})`);
        }
        const st = await waitIdle(proxy, dead);
        assert.equal(st.connections.failed, 2);
        assert.equal(st.bytes.toTarget, 0n, 'nothing was written to a target that never connected');

        // The same proxy still serves: a new mapping works, and so does the old one once a target appears.
        const ok = await addMapping(proxy, echo.port);
        t.after(() => safeRemove(proxy, ok));
        await assertForwards(ok.listen.port);
        const okStats = await waitIdle(proxy, ok);
        assert.equal(okStats.connections.failed, 0);
      },
    );

    test(
      'target resets mid-transfer: the client gets ECONNRESET; new connections still work',
      { timeout: 30000 },
      async (t) => {
        const server = await startServer((sock, i) => {
          if (i > 0) return sock.pipe(sock);
          let n = 0;
          sock.on('data', (c) => {
            n += c.length;
            if (n >= 64 * KiB && !sock.destroyed) sock.resetAndDestroy();
          });
        });
        const m = await addMapping(proxy, server.port);
        let client;
        t.after(() => client?.destroy());
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeServers(server));
        client = await connect(m.listen.port);
        let sawEnd = false;
        client.on('end', () => (sawEnd = true));
        client.resume();
        const err = waitError(client, 5000, 'client error after the target reset');
        client.write(randomPayload(1 * MiB));
        const e = await err;
        assert.equal(e.code, 'ECONNRESET', `client error: ${e.message}`);
        assert.equal(sawEnd, false, 'the reset must not be forwarded as a clean FIN');

        await assertForwards(m.listen.port);
        const st = await waitIdle(proxy, m);
        assert.equal(st.connections.accepted, 2);
        assert.equal(st.connections.failed, 0, 'a reset after connecting is not a failed connect');
      },
    );

    test(
      'client resets mid-transfer: the target gets ECONNRESET; new connections still work',
      { timeout: 30000 },
      async (t) => {
        let target;
        const server = await startServer((sock, i) => {
          if (i > 0) return sock.pipe(sock);
          target = sock;
          sock.received = 0;
          sock.sawEnd = false;
          sock.on('data', (c) => (sock.received += c.length));
          sock.on('end', () => (sock.sawEnd = true));
          sock.write(randomPayload(64 * KiB)); // traffic in the other direction too
        });
        const m = await addMapping(proxy, server.port);
        let client;
        t.after(() => client?.destroy());
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeServers(server));
        client = await connect(m.listen.port);
        client.resume();
        client.write(randomPayload(256 * KiB));
        await waitFor(() => target && target.received >= 64 * KiB, {
          timeout: 5000,
          what: 'target receives 64 KiB',
        });
        const err = waitError(target, 5000, 'target error after the client reset');
        client.resetAndDestroy();
        const e = await err;
        assert.equal(e.code, 'ECONNRESET', `target error: ${e.message}`);
        assert.equal(target.sawEnd, false, 'the reset must not be forwarded as a clean FIN');

        await assertForwards(m.listen.port);
        const st = await waitIdle(proxy, m);
        assert.equal(st.connections.accepted, 2);
        assert.equal(st.connections.failed, 0);
      },
    );

    test(
      'target resets after the client half-closed: the client still gets ECONNRESET',
      { timeout: 30000 },
      async (t) => {
        const server = await startServer((sock) => {
          sock.resume();
          sock.on('end', () => setTimeout(() => sock.resetAndDestroy(), 100));
          sock.write(randomPayload(16 * KiB));
        });
        const m = await addMapping(proxy, server.port);
        let client;
        t.after(() => client?.destroy());
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeServers(server));
        client = await connect(m.listen.port);
        let sawEnd = false;
        client.on('end', () => (sawEnd = true));
        client.resume();
        const err = waitError(client, 5000, 'client error after the target reset');
        client.end(randomPayload(100 * KiB));
        const e = await err;
        assert.equal(e.code, 'ECONNRESET', `client error: ${e.message}`);
        assert.equal(sawEnd, false, 'the reset must not be forwarded as a clean FIN');
        await waitIdle(proxy, m);
      },
    );

    test(
      'clients that reset right after connecting leave no connection behind',
      { timeout: 30000 },
      async (t) => {
        const N = 50;
        const target = await startEchoServer();
        const m = await addMapping(proxy, target.port);
        let sockets = [];
        t.after(async () => {
          for (const s of sockets) s.destroy();
          await safeRemove(proxy, m);
          await closeServers(target);
        });
        sockets = await openConnections(N, m.listen.port);
        for (const s of sockets) s.resetAndDestroy();
        const st = await waitStats(
          proxy,
          m,
          (x) => x.connections.accepted === N && x.connections.active === 0,
          `accepted === ${N} and active === 0`,
        );
        assert.equal(st.connections.failed, 0);
        await waitFor(() => target.sockets.size === 0, {
          timeout: 3000,
          what: 'no target-side connection left open',
          describe: () => `${target.sockets.size} still open`,
        });
        await assertForwards(m.listen.port);
      },
    );

    test(
      '100 concurrent connections to a refusing target: all closed promptly, all counted',
      {
        timeout: 30000,
      },
      async () => {
        const N = 100;
        const dead = await addMapping(proxy, await freePort(V4));
        const sockets = [];
        try {
          const t0 = Date.now();
          await withTimeout(
            Promise.all(
              Array.from({ length: N }, async (_, i) => {
                let s;
                try {
                  s = await connect(dead.listen.port);
                } catch (err) {
                  if (err.code === 'ECONNRESET') return; // reset during the handshake: closed too
                  throw err;
                }
                sockets.push(s);
                const closed = await waitPeerClosed(s, 3000, `connection ${i} closed`);
                if (closed.error) assert.equal(closed.error.code, 'ECONNRESET');
              }),
            ),
            5000,
            `${N} connections to a refusing target closed`,
          );
          assert.ok(Date.now() - t0 < 3000, `all closed within 3 s (took ${Date.now() - t0} ms)`);
          const st = await waitStats(
            proxy,
            dead,
            (x) => x.connections.failed === N && x.connections.active === 0,
            `failed === ${N} and active === 0`,
          );
          assert.equal(st.connections.accepted, N);
          const ok = await addMapping(proxy, echo.port);
          try {
            await assertForwards(ok.listen.port);
          } finally {
            await safeRemove(proxy, ok);
          }
        } finally {
          for (const s of sockets) s.destroy();
          await safeRemove(proxy, dead);
        }
      },
    );

    test(
      'remove() during a transfer cuts the connection and frees the port',
      { timeout: 30000 },
      async (t) => {
        const target = await startEchoServer();
        const m = await addMapping(proxy, target.port);
        let client;
        t.after(() => client?.destroy());
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeServers(target));
        client = await connect(m.listen.port);
        let got = 0;
        client.on('data', (c) => (got += c.length));
        const size = 64 * MiB;
        client.write(randomPayload(size));
        await waitFor(() => got >= 1 * MiB, { timeout: 10000, what: 'the transfer is under way' });
        await withTimeout(proxy.remove(m), 5000, 'proxy.remove during a transfer');
        const closed = await waitPeerClosed(client, 2000, 'client of the removed mapping is closed');
        if (closed.error)
          assert.equal(closed.error.code, 'ECONNRESET', `client error: ${closed.error.message}`);
        assert.ok(got < size, 'the transfer was cut short');
        await waitFor(() => target.sockets.size === 0, {
          timeout: 2000,
          what: 'target-side connection closed',
        });
        await expectRefused(m.listen.port);
      },
    );

    test(
      'data and FIN sent before the target accepted are all delivered once it does',
      {
        timeout: 30000,
      },
      async () => {
        const slow = await startBlackhole({ echoWhenReleased: true });
        let m, client;
        try {
          m = await addMapping(proxy, slow.port);
          const payload = randomPayload(200 * KiB + 3);
          client = await connect(m.listen.port);
          let released = false;
          let echoedBeforeRelease = 0;
          client.on('data', (chunk) => {
            if (!released) echoedBeforeRelease += chunk.length;
          });
          const result = withTimeout(collect(client), 15000, 'echo after the release');
          client.end(payload);
          await sleep(500);
          released = true;
          slow.release(); // the proxy's connect completes only now (after a SYN retransmission)
          const got = await result;
          assert.equal(echoedBeforeRelease, 0, 'nothing can be echoed before the target accepts');
          assert.equal(got.bytes, payload.length);
          assert.equal(got.sha256, sha256(payload));
          const st = await waitIdle(proxy, m);
          assert.equal(st.connections.failed, 0);
          assert.equal(st.bytes.toTarget, BigInt(payload.length));
          assert.equal(st.bytes.toClient, BigInt(payload.length));
        } finally {
          client?.destroy();
          await safeRemove(proxy, m);
          await slow.close();
        }
      },
    );

    test(
      'connectTimeoutMs: a target that never answers is given up on and counted as failed',
      {
        timeout: 30000,
      },
      async () => {
        const hole = await startBlackhole();
        const connectTimeoutMs = 500;
        let m;
        let client;
        try {
          m = await withTimeout(
            proxy.add(mappingOptions(hole.port, { connectTimeoutMs })),
            5000,
            'add with connectTimeoutMs',
          );
          const t0 = Date.now();
          client = await connect(m.listen.port);
          await waitPeerClosed(client, connectTimeoutMs + 2500, 'client closed after the connect timeout');
          const took = Date.now() - t0;
          assert.ok(
            took >= connectTimeoutMs - 150,
            `closed only after the connect timeout (took ${took} ms)`,
          );
          assert.ok(
            took < connectTimeoutMs + 2000,
            `closed soon after the connect timeout (took ${took} ms)`,
          );
          const st = await waitStats(
            proxy,
            m,
            (x) => x.connections.failed === 1 && x.connections.active === 0,
            'failed === 1 and active === 0',
          );
          assert.equal(st.connections.accepted, 1);
          assert.equal(st.bytes.toTarget, 0n);
        } finally {
          client?.destroy();
          await safeRemove(proxy, m);
          await hole.close();
        }
      },
    );

    test(
      'remove() with live connections closes them and stops listening; other mappings keep working',
      {
        timeout: 30000,
      },
      async () => {
        const echoA = await startEchoServer(); // only mapping A's connections land here
        const a = await addMapping(proxy, echoA.port);
        const b = await addMapping(proxy, echo.port);
        let liveA = [];
        let liveB;
        try {
          liveA = await openConnections(3, a.listen.port);
          for (const s of liveA) await pingEcho(s);
          liveB = await connect(b.listen.port);
          await pingEcho(liveB);
          await waitStats(proxy, a, (s) => s.connections.active === 3, 'mapping A has 3 active connections');
          assert.equal(echoA.sockets.size, 3);

          await withTimeout(proxy.remove(a), 5000, 'proxy.remove with live connections');

          const closed = await withTimeout(
            Promise.all(
              liveA.map((s, i) => waitPeerClosed(s, 2000, `client ${i} of the removed mapping is closed`)),
            ),
            3000,
            'clients of the removed mapping closed',
          );
          for (const c of closed)
            if (c.error) assert.equal(c.error.code, 'ECONNRESET', `client error: ${c.error.message}`);
          await waitFor(() => echoA.sockets.size === 0, {
            timeout: 2000,
            what: 'target-side connections of the removed mapping closed',
            describe: () => `${echoA.sockets.size} still open`,
          });
          await expectRefused(a.listen.port, V4, 'listen port of the removed mapping');

          // The other mapping is untouched: its live connection and new connections work.
          const again = await pingEcho(liveB, Buffer.from('after remove'));
          assert.equal(again.toString(), 'after remove');
          await assertForwards(b.listen.port);
        } finally {
          for (const s of liveA) s.destroy();
          liveB?.destroy();
          await safeRemove(proxy, a);
          await safeRemove(proxy, b);
          await closeServers(echoA);
        }
      },
    );

    test(
      'the port of a removed or closed mapping can be bound again at once',
      { timeout: 15000 },
      async (t) => {
        const m = await addMapping(proxy, echo.port);
        let again;
        const own = createProxy({ engine, threads: 1 });
        let holder;
        t.after(() => safeRemove(proxy, m));
        t.after(() => safeRemove(proxy, again));
        t.after(() => safeClose(own));
        t.after(() => closeServers(holder));
        await assertForwards(m.listen.port);
        await withTimeout(proxy.remove(m), 5000, 'proxy.remove');
        again = await addMapping(proxy, echo.port, { listenPort: m.listen.port });
        assert.equal(again.listen.port, m.listen.port);
        await assertForwards(again.listen.port, V4, 'same port, new mapping');

        const n = await addMapping(own, echo.port);
        await assertForwards(n.listen.port);
        await withTimeout(own.close(), 5000, 'proxy.close');
        holder = await startEchoServer({ port: n.listen.port }); // a plain server takes the port over
        await assertForwards(n.listen.port, V4, 'plain server on the freed port');
      },
    );

    test('remove() accepts a mapping id', { timeout: 15000 }, async (t) => {
      const m = await addMapping(proxy, echo.port);
      t.after(() => safeRemove(proxy, m));
      await assertForwards(m.listen.port);
      await withTimeout(proxy.remove(m.id), 5000, 'proxy.remove(id)');
      await expectRefused(m.listen.port);
    });

    test(
      'close() with live connections: resolves, closes them, ports refuse, add() rejects afterwards',
      {
        timeout: 30000,
      },
      async () => {
        const own = createProxy({ engine, threads: 1 });
        const target = await startEchoServer();
        const clients = [];
        try {
          assert.equal(own.closed, false);
          const a = await addMapping(own, target.port);
          const b = await addMapping(own, target.port, { listenHost: V6 });
          clients.push(...(await openConnections(2, a.listen.port, V4)));
          clients.push(...(await openConnections(2, b.listen.port, V6)));
          for (const s of clients) await pingEcho(s);
          assert.equal(target.sockets.size, 4);

          // Two overlapping close() calls: both must resolve.
          await withTimeout(
            Promise.all([own.close(), own.close()]),
            5000,
            'proxy.close (called twice) with live connections',
          );
          assert.equal(own.closed, true, 'proxy.closed after close()');

          await withTimeout(
            Promise.all(clients.map((s, i) => waitPeerClosed(s, 2000, `client ${i} closed by proxy.close`))),
            3000,
            'all clients closed',
          );
          await waitFor(() => target.sockets.size === 0, {
            timeout: 2000,
            what: 'target-side connections closed',
            describe: () => `${target.sockets.size} still open`,
          });
          await expectRefused(a.listen.port, V4, 'IPv4 listen port after close');
          await expectRefused(b.listen.port, V6, 'IPv6 listen port after close');

          await assert.rejects(
            async () => withTimeout(own.add(mappingOptions(target.port)), 3000, 'add after close'),
            (err) => {
              assert.ok(err instanceof Error);
              assert.doesNotMatch(err.message, /^timed out/, 'add after close must reject, not hang');
              return true;
            },
          );
        } finally {
          for (const s of clients) s.destroy();
          await safeClose(own);
          await closeServers(target);
        }
      },
    );

    test(
      'close() while a connection is still connecting to the target resolves promptly',
      {
        timeout: 30000,
      },
      async () => {
        const hole = await startBlackhole();
        const own = createProxy({ engine, threads: 1 });
        let client;
        try {
          const m = await withTimeout(own.add(mappingOptions(hole.port)), 5000, 'add');
          client = await connect(m.listen.port);
          await waitStats(own, m, (x) => x.connections.active === 1, 'the connection is pending');
          await withTimeout(own.close(), 3000, 'proxy.close with a connect in progress');
          await waitPeerClosed(client, 2000, 'client closed by proxy.close');
          await expectRefused(m.listen.port);
        } finally {
          client?.destroy();
          await safeClose(own);
          await hole.close();
        }
      },
    );

    test(
      'close() releases every file descriptor the proxy used (threads: 2)',
      { timeout: 30000 },
      async (t) => {
        const fds = () => readdirSync('/proc/self/fd').length;
        const target = await startEchoServer();
        const baseline = fds();
        const own = createProxy({ engine, threads: 2 });
        let live = [];
        t.after(async () => {
          for (const s of live) s.destroy();
          await safeClose(own);
          await closeServers(target);
        });
        const m = await addMapping(own, target.port);
        const dead = await addMapping(own, await freePort(V4));
        const payloads = Array.from({ length: 100 }, (_, i) => randomPayload(64 * KiB + i));
        await withTimeout(
          Promise.all(payloads.map((p) => exchange(m.listen.port, V4, p))),
          15000,
          'traffic before close',
        );
        for (let i = 0; i < 5; i++) {
          const s = await connect(dead.listen.port).catch(() => null);
          if (s) await waitPeerClosed(s, 2000).finally(() => s.destroy());
        }
        live = await openConnections(10, m.listen.port);
        for (const s of live) await pingEcho(s);
        assert.ok(fds() > baseline, 'the proxy holds descriptors while it works');
        await withTimeout(own.close(), 5000, 'proxy.close');
        for (const s of live) s.destroy();
        await waitFor(() => fds() <= baseline, {
          timeout: 3000,
          what: 'descriptor count back to where it was before createProxy()',
          describe: () => `${fds()} open, ${baseline} before`,
        });
      },
    );

    test('EADDRINUSE when the listen port is taken', { timeout: 15000 }, async (t) => {
      const blocker = await startServer(() => {});
      let a;
      t.after(() => safeRemove(proxy, a));
      t.after(() => closeServers(blocker));
      await assert.rejects(
        async () =>
          withTimeout(proxy.add(mappingOptions(echo.port, { listenPort: blocker.port })), 5000, 'add'),
        (err) => {
          assert.equal(err.code, 'EADDRINUSE', `got ${err.code}: ${err.message}`);
          return true;
        },
      );
      a = await addMapping(proxy, echo.port);
      await assert.rejects(
        async () =>
          withTimeout(proxy.add(mappingOptions(echo.port, { listenPort: a.listen.port })), 5000, 'add'),
        (err) => {
          assert.equal(
            err.code,
            'EADDRINUSE',
            `second mapping on the same port: got ${err.code}: ${err.message}`,
          );
          return true;
        },
      );
      // The failed adds leave the proxy and the existing mapping intact.
      await assertForwards(a.listen.port);
      const ids = proxy.stats().mappings.map((s) => s.id);
      assert.deepEqual(ids, [a.id], 'failed adds do not leave mappings behind');
    });
  });

  describe(`option validation [${engine}]`, () => {
    let proxy;
    let echoPort;

    before(async () => {
      proxy = createProxy({ engine });
      echoPort = await freePort();
    });

    after(async () => {
      await safeClose(proxy);
    });

    const add = (opts) => () => proxy.add(opts);
    const base = () => mappingOptions(echoPort);

    for (const port of [-1, 65536, 1.5, '80']) {
      test(`listen.port ${JSON.stringify(port)}`, () =>
        expectBadOption(add({ ...base(), listen: { host: V4, port } }), 'listen.port'));
    }

    for (const port of [0, -1, 65536, 2.5, '5432']) {
      test(`target.port ${JSON.stringify(port)}`, () =>
        expectBadOption(add({ ...base(), target: { host: V4, port } }), 'target.port'));
    }

    for (const host of ['999.1.1.1', 'not an ip!!']) {
      test(`target.host ${JSON.stringify(host)}`, () =>
        expectBadOption(add({ ...base(), target: { host, port: echoPort } }), 'target.host'));
    }

    test('listen.host "not an ip!!"', () =>
      expectBadOption(add({ ...base(), listen: { host: 'not an ip!!', port: 0 } }), 'listen.host'));

    for (const proto of ['sctp', 'xyz']) {
      test(`proto ${JSON.stringify(proto)}`, () => expectBadOption(add({ ...base(), proto }), 'proto'));
    }

    test('missing target', () => {
      const opts = base();
      delete opts.target;
      return expectBadOption(add(opts), 'target');
    });

    test('missing listen', () => {
      const opts = base();
      delete opts.listen;
      return expectBadOption(add(opts), 'listen');
    });

    test('unknown engine', () => expectBadProxyOption({ engine: 'turbo' }, 'engine'));

    for (const threads of [0, 65, 1.5]) {
      test(`threads ${threads}`, () => expectBadProxyOption({ engine, threads }, 'threads'));
    }

    for (const [field, value] of [
      ['pipeSize', 100],
      ['pipeSize', 2 * 1024 * 1024],
      ['maxPipes', -1],
      ['maxPipes', 1.5],
    ]) {
      test(`${field} ${value}`, () => expectBadProxyOption({ engine, [field]: value }, field));
    }

    test('no mapping was created by the rejected calls, and the proxy still works', async (t) => {
      assert.deepEqual(proxy.stats().mappings, []);
      const echo = await startEchoServer();
      t.after(() => closeServers(echo));
      const m = await addMapping(proxy, echo.port);
      await assertForwards(m.listen.port);
      await safeRemove(proxy, m);
    });
  });
}
