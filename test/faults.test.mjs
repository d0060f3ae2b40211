// @test-tag slow: about 35 s
// Faults a forwarder must survive without corrupting, truncating or disguising a byte stream:
// a target or a client killed (SIGKILL) mid-transfer, a mapping removed and the proxy closed
// while data moves, and SIGTERM to portsplice-docker-proxy and to the CLI during transfers.
// After each fault the proxy must still serve the next connection.
//
// Killed peers run in child processes: when a process dies with unread data in a socket's
// receive queue the kernel sends RST, otherwise FIN after the data it had queued. The proxy
// must pass on exactly that: RST as RST, FIN as FIN after every byte.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';

import { createProxy, dockerProxyPath } from '../dist/index.js';
import {
  V4,
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
  waitError,
  addMapping,
  statsOf,
  waitIdle,
  safeClose,
  closeServers,
  checkByteInvariants,
  show,
} from './helpers.mjs';
import {
  CLI_PATH,
  PATTERN_SOURCE,
  PatternChecker,
  patternBase,
  pushPattern,
  spawnNode,
  spawnChild,
  rawRead,
  rawOutcome,
  connectPaused,
  startPausedServer,
  startBinary,
  killChildren,
  fdCount,
  socketInodes,
} from './fault-helpers.mjs';

after(killChildren);

/** Pattern blocks: odd lengths, so that a lost or repeated segment never lines up again. */
const TO_CLIENT = patternBase(64 * KiB + 7, 1);
const TO_TARGET = patternBase(64 * KiB + 13, 2);

/** A proof that a proxy port forwards: echo a short message through it. */
async function assertForwards(port, text = 'still serving') {
  const got = await exchange(port, V4, Buffer.from(text), { timeout: 5000, keep: true });
  assert.equal(got.data.toString(), text, `echo through ${V4}:${port}`);
}

/**
 * A target server in a child process, so that it can be killed. Modes:
 * - 'sink': reads nothing (what arrives stays unread), sends `sendBytes` of TO_CLIENT's pattern;
 * - 'reader': reads everything; once `request` bytes arrived it sends `sendBytes` of the pattern;
 * - 'echo': echoes.
 * Prints `PORT n`, then `SENT` once the kernel has taken everything it sent.
 */
const TARGET_CHILD = `
import net from 'node:net';
${PATTERN_SOURCE}
const { mode, port, sendBytes, request } = JSON.parse(process.argv[1]);
const base = patternBase(${TO_CLIENT.length}, 1);
const prefix = (n) => {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += base.length) base.copy(out, i, 0, Math.min(base.length, n - i));
  return out;
};
// A sink never reads (pauseOnConnect: not even Node's read-ahead).
const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: mode === 'sink' }, (socket) => {
  socket.on('error', () => {});
  if (mode === 'echo') return socket.pipe(socket);
  const send = () => socket.write(prefix(sendBytes), () => console.log('SENT'));
  if (mode === 'sink') return send();
  let got = 0;
  socket.on('data', (chunk) => {
    got += chunk.length;
    if (got >= request && got - chunk.length < request) send();
  });
});
server.on('error', (err) => {
  console.log('LISTEN_ERROR ' + err.code);
  process.exit(3);
});
server.listen({ host: '127.0.0.1', port }, () => console.log('PORT ' + server.address().port));
`;

/**
 * Start TARGET_CHILD. A given `port` (a restart where a killed target was) may be taken for a
 * moment by another program's outgoing connection on a busy machine: that is retried.
 */
async function startTargetChild({ mode, port = 0, sendBytes = 0, request = 0 }) {
  for (let attempt = 0; ; attempt++) {
    const child = spawnNode(TARGET_CHILD, [JSON.stringify({ mode, port, sendBytes, request })]);
    const m = await child.waitLine(/^(?:PORT (\d+)|LISTEN_ERROR (\S+))$/);
    if (m[1]) return Object.assign(child, { port: Number(m[1]) });
    if (m[2] !== 'EADDRINUSE' || attempt === 20) throw new Error(`the target cannot listen: ${m[2]}`);
    await sleep(250);
  }
}

/** A client in a child process: connects, reads nothing, and sends TO_TARGET's pattern until killed. */
const CLIENT_CHILD = `
import net from 'node:net';
${PATTERN_SOURCE}
const { port } = JSON.parse(process.argv[1]);
const base = patternBase(${TO_TARGET.length}, 2);
const socket = net.connect({ host: '127.0.0.1', port });
socket.on('error', () => {});
socket.on('connect', async () => {
  socket.pause();
  console.log('CONNECTED');
  for (;;) {
    if (!socket.write(base)) await new Promise((resolve) => socket.once('drain', resolve));
  }
});
`;

/**
 * The proxy under test: the splice or stream engine in this process, or the drop-in binary in
 * a child. `stats()` is undefined for the binary.
 */
async function startProxy(kind, targetPort) {
  if (kind === 'binary') {
    const child = await startBinary(dockerProxyPath, targetPort);
    return {
      port: child.port,
      stats: () => undefined,
      async close() {
        child.kill('SIGKILL');
        await child.waitExit(5000).catch(() => {});
      },
    };
  }
  const proxy = createProxy({ engine: kind, threads: 1 });
  const mapping = await addMapping(proxy, targetPort);
  return {
    port: mapping.listen.port,
    proxy,
    mapping,
    stats: () => statsOf(proxy, mapping),
    close: () => safeClose(proxy),
  };
}

/**
 * Read `socket` with read(2) (see rawRead) through a PatternChecker for `base`. Returns
 * `{ checker, reader, outcome(timeout, what) }`; `outcome` resolves 'fin' or the error code.
 */
function observe(socket, base) {
  const checker = new PatternChecker(base);
  const reader = rawRead(socket, (chunk) => checker.update(chunk));
  return {
    checker,
    reader,
    outcome: (timeout, what) => rawOutcome(socket, reader, timeout, what),
  };
}

for (const kind of ['splice', 'stream', 'binary']) {
  describe(`peers killed mid-transfer [${kind}]`, () => {
    test(
      'target SIGKILLed with unread data: its RST reaches the client as a reset, after every byte it sent; the next connection is served',
      { timeout: 30000 },
      async (t) => {
        let target = await startTargetChild({ mode: 'sink', sendBytes: 1 * MiB });
        const pu = await startProxy(kind, target.port);
        let client;
        t.after(async () => {
          client?.destroy();
          target.kill('SIGKILL');
          await pu.close();
        });
        client = await connectPaused(pu.port);
        const obs = observe(client, TO_CLIENT);
        const push = pushPattern(client, TO_TARGET, 128); // 8 MiB toward a target that reads nothing
        await target.waitLine(/^SENT$/);
        await waitFor(() => obs.checker.bytes >= 1 * MiB && push.accepted >= 1 * MiB, {
          timeout: 10000,
          what: 'the target’s 1 MiB at the client, and 1 MiB queued toward the target',
          describe: () => `received ${obs.checker.bytes}, accepted ${push.accepted}`,
        });
        target.kill('SIGKILL');
        await target.waitExit(5000);

        const outcome = await obs.outcome(10000, 'the client sees the target go away');
        assert.equal(outcome, 'ECONNRESET', 'a target killed with unread data is a reset, not a clean FIN');
        assert.ok(obs.checker.ok, `what the client got is what the target sent: ${obs.checker.describe()}`);
        assert.equal(obs.checker.bytes, 1 * MiB, 'every byte the target sent arrived before the reset');

        // A new target process on the same port: the same mapping serves it.
        target = await startTargetChild({ mode: 'echo', port: target.port });
        await assertForwards(pu.port);
        if (pu.stats()) {
          const st = await waitIdle(pu.proxy, pu.mapping);
          assert.equal(st.connections.accepted, 2, show(st.connections));
          assert.equal(st.connections.failed, 0, 'a reset after connecting is not a failed connect');
          checkByteInvariants(assert, kind, st);
        }
      },
    );

    test(
      'target SIGKILLed with unread data while its bytes still queue toward a slow client: the client gets a clean prefix, then a reset',
      { timeout: 30000 },
      async (t) => {
        let target = await startTargetChild({ mode: 'sink', sendBytes: 64 * MiB });
        const pu = await startProxy(kind, target.port);
        let client;
        t.after(async () => {
          client?.destroy();
          target.kill('SIGKILL');
          await pu.close();
        });
        client = await connectPaused(pu.port);
        const obs = observe(client, TO_CLIENT);
        // 48 KiB the target never reads: it dies with unread data, so its kernel sends RST. The
        // proxy has nothing left to write toward it, so it can only learn of the reset by reading.
        client.write(Buffer.alloc(48 * KiB, 5));
        await waitFor(() => obs.checker.bytes >= 256 * KiB, {
          timeout: 10000,
          what: 'the target’s data flowing to the client',
          describe: () => `received ${obs.checker.bytes}`,
        });
        // The client stops reading: the target's bytes queue up in the proxy, which is where
        // they are when the target dies.
        obs.reader.pause();
        await sleep(300);
        target.kill('SIGKILL');
        await target.waitExit(5000);
        await sleep(200);
        obs.reader.resume();

        const outcome = await obs.outcome(10000, 'the client sees the target go away');
        assert.equal(outcome, 'ECONNRESET', 'a target killed with unread data is a reset, not a clean FIN');
        assert.ok(
          obs.checker.ok,
          `what the client got is a prefix of what was sent: ${obs.checker.describe()}`,
        );
        assert.ok(obs.checker.bytes < 64 * MiB);

        target = await startTargetChild({ mode: 'echo', port: target.port });
        await assertForwards(pu.port);
        if (pu.stats()) {
          const st = await waitIdle(pu.proxy, pu.mapping);
          assert.equal(st.connections.failed, 0);
          checkByteInvariants(assert, kind, st);
        }
      },
    );

    test(
      'target SIGKILLed with nothing unread: the client gets every byte, then a clean FIN; the next connection is served',
      { timeout: 30000 },
      async (t) => {
        const size = 4 * MiB;
        let target = await startTargetChild({ mode: 'reader', sendBytes: size, request: 1000 });
        const pu = await startProxy(kind, target.port);
        let client;
        t.after(async () => {
          client?.destroy();
          target.kill('SIGKILL');
          await pu.close();
        });
        client = await connectPaused(pu.port);
        const obs = observe(client, TO_CLIENT);
        client.write(randomPayload(1000));
        await target.waitLine(/^SENT$/); // the kernel holds the rest; the target has read everything
        target.kill('SIGKILL');
        await target.waitExit(5000);

        const outcome = await obs.outcome(10000, 'the client sees the target go away');
        assert.equal(outcome, 'fin', 'a target that died with nothing unread sent FIN: so must the proxy');
        assert.ok(obs.checker.ok, obs.checker.describe());
        assert.equal(obs.checker.bytes, size, 'every byte the target sent before it died, then the FIN');
        assert.deepEqual(client.errors, []);
        // The other direction is still open; closing it ends the connection without a reset.
        client.end();
        if (pu.stats()) {
          const st = await waitIdle(pu.proxy, pu.mapping);
          assert.equal(st.bytes.toClient, BigInt(size), show(st.bytes));
          assert.equal(st.bytes.toTarget, 1000n, show(st.bytes));
          assert.equal(st.connections.failed, 0);
          checkByteInvariants(assert, kind, st);
        }
        client.destroy();

        target = await startTargetChild({ mode: 'echo', port: target.port });
        await assertForwards(pu.port);
      },
    );

    test(
      'client SIGKILLed mid-transfer: the target is reset, and what it got is a prefix of what was sent',
      { timeout: 30000 },
      async (t) => {
        let first;
        const server = await startPausedServer((socket, i) => {
          if (i > 0) return socket.resume().pipe(socket);
          first = { socket, obs: observe(socket, TO_TARGET), sent: false };
          // 1 MiB the client never reads: it dies with unread data, so its kernel sends RST.
          socket.write(Buffer.alloc(1 * MiB, 7), () => (first.sent = true));
        });
        const pu = await startProxy(kind, server.port);
        let client;
        t.after(async () => {
          client?.kill('SIGKILL');
          await pu.close();
          await server.close();
        });
        client = spawnNode(CLIENT_CHILD, [JSON.stringify({ port: pu.port })]);
        await client.waitLine(/^CONNECTED$/);
        await waitFor(() => first?.sent && first.obs.checker.bytes >= 1 * MiB, {
          timeout: 10000,
          what: '1 MiB each way',
        });
        // The target stops reading: the client's bytes queue up in the proxy, which is where
        // they are when the client dies.
        first.obs.reader.pause();
        await sleep(300);
        client.kill('SIGKILL');
        await client.waitExit(5000);
        await sleep(200);
        first.obs.reader.resume();

        const outcome = await first.obs.outcome(10000, 'the target sees the client go away');
        assert.equal(outcome, 'ECONNRESET', 'a killed client is a reset at the target, not a clean FIN');
        assert.ok(first.obs.checker.ok, `the target got a clean prefix: ${first.obs.checker.describe()}`);

        await assertForwards(pu.port);
        if (pu.stats()) {
          const st = await waitIdle(pu.proxy, pu.mapping);
          assert.equal(st.connections.accepted, 2);
          assert.equal(st.connections.failed, 0);
          checkByteInvariants(assert, kind, st);
        }
      },
    );
  });
}

/**
 * `n` clients through `port`, each sending TO_TARGET's pattern (64 blocks, about 4 MiB) and
 * receiving TO_CLIENT's from a target that does the same; resolves once every one of them has
 * moved at least 256 KiB each way. Returns the clients, each `{ socket, obs }`.
 */
async function busyClients(port, n, server) {
  const clients = [];
  for (let i = 0; i < n; i++) {
    const socket = await connectPaused(port);
    clients.push({ socket, obs: observe(socket, TO_CLIENT) });
    pushPattern(socket, TO_TARGET, 64);
  }
  await waitFor(
    () =>
      clients.every((c) => c.obs.checker.bytes >= 256 * KiB) &&
      server.targets.length === n &&
      server.targets.every((t) => t.obs.checker.bytes >= 256 * KiB),
    { timeout: 15000, what: `${n} connections moving data both ways` },
  );
  return clients;
}

/** A target for busyClients: checks everything it reads, sends 64 blocks of TO_CLIENT's pattern. */
async function startBusyTarget() {
  const targets = [];
  const server = await startPausedServer((socket) => {
    targets.push({ socket, obs: observe(socket, TO_TARGET) });
    pushPattern(socket, TO_CLIENT, 64);
  });
  server.targets = targets;
  return server;
}

/** Every peer was reset (never a clean FIN) and got only correct bytes. */
async function assertAllReset(peers, what) {
  const outcomes = await Promise.all(peers.map((p, i) => p.obs.outcome(5000, `${what}: peer ${i}`)));
  peers.forEach((p, i) => {
    assert.equal(outcomes[i], 'ECONNRESET', `${what}: peer ${i} is reset`);
    assert.ok(p.obs.checker.ok, `${what}: peer ${i}: ${p.obs.checker.describe()}`);
  });
}

for (const engine of ['splice', 'stream']) {
  describe(`remove and close with data in flight [${engine}]`, () => {
    test(
      'remove() while 20 connections move data both ways: clients and targets reset, no socket left, the proxy serves on',
      { timeout: 60000 },
      async (t) => {
        const server = await startBusyTarget();
        const echo = await startEchoServer();
        const proxy = createProxy({ engine, threads: 2 });
        let clients = [];
        t.after(async () => {
          for (const c of clients) c.socket.destroy();
          await safeClose(proxy);
          await closeServers(server, echo);
        });
        const socketsBefore = socketInodes().size;
        const m = await addMapping(proxy, server.port);
        clients = await busyClients(m.listen.port, 20, server);
        await withTimeout(proxy.remove(m), 5000, 'remove() with 20 busy connections');

        await assertAllReset(clients, 'client after remove()');
        await assertAllReset(server.targets, 'target after remove()');
        await expectRefused(m.listen.port, V4, 'the removed mapping’s port');
        for (const c of clients) c.socket.destroy();
        for (const t of server.targets) t.socket.destroy();
        await waitFor(() => socketInodes().size <= socketsBefore, {
          timeout: 5000,
          what: 'as many sockets open as before add()',
          describe: () => `${socketInodes().size} open, ${socketsBefore} before`,
        });

        const again = await addMapping(proxy, echo.port);
        await assertForwards(again.listen.port);
        assert.deepEqual(
          proxy.stats().mappings.map((s) => s.id),
          [again.id],
        );
      },
    );

    test(
      'close() while 20 connections move data both ways: everyone reset, every descriptor released, a new proxy serves',
      { timeout: 60000 },
      async (t) => {
        const server = await startBusyTarget();
        const echo = await startEchoServer();
        const fdsBefore = fdCount();
        const proxy = createProxy({ engine, threads: 2 });
        let clients = [];
        let fresh;
        t.after(async () => {
          for (const c of clients) c.socket.destroy();
          await safeClose(proxy);
          await safeClose(fresh);
          await closeServers(server, echo);
        });
        const m = await addMapping(proxy, server.port);
        clients = await busyClients(m.listen.port, 20, server);
        await withTimeout(proxy.close(), 5000, 'close() with 20 busy connections');
        assert.equal(proxy.closed, true);

        await assertAllReset(clients, 'client after close()');
        await assertAllReset(server.targets, 'target after close()');
        await expectRefused(m.listen.port);
        for (const c of clients) c.socket.destroy();
        for (const t of server.targets) t.socket.destroy();
        await waitFor(() => fdCount() <= fdsBefore, {
          timeout: 5000,
          what: 'the descriptor count back to where it was before createProxy()',
          describe: () => `${fdCount()} open, ${fdsBefore} before`,
        });

        fresh = createProxy({ engine, threads: 2 });
        const n = await addMapping(fresh, echo.port);
        await assertForwards(n.listen.port);
      },
    );
  });
}

describe('SIGTERM during transfers', () => {
  test(
    'portsplice-docker-proxy: exits 0 within 1 s, the connection in flight is reset, the port refused',
    { timeout: 30000 },
    async (t) => {
      const echo = await startEchoServer();
      let proxy;
      let client;
      t.after(async () => {
        client?.destroy();
        proxy?.kill('SIGKILL');
        await closeServers(echo);
      });
      proxy = await startBinary(dockerProxyPath, echo.port);
      client = await connectPaused(proxy.port);
      const obs = observe(client, TO_TARGET); // echoed back: what comes back is what went out
      pushPattern(client, TO_TARGET, 1024); // 64 MiB
      await waitFor(() => obs.checker.bytes >= 1 * MiB, { timeout: 10000, what: 'the transfer under way' });
      const t0 = Date.now();
      proxy.kill('SIGTERM');
      const exit = await proxy.waitExit(3000);
      const took = Date.now() - t0;
      assert.deepEqual(exit, { code: 0, signal: null }, proxy.describe());
      assert.ok(took < 1000, `exited ${took} ms after SIGTERM`);
      assert.equal(await obs.outcome(5000, 'the client sees the proxy stop'), 'ECONNRESET');
      assert.ok(obs.checker.ok, obs.checker.describe());
      assert.ok(obs.checker.bytes < 64 * MiB, 'the transfer was cut');
      await expectRefused(proxy.port);
    },
  );

  /** Start the CLI forwarding a free port to `targetPort`; resolves the child with `port`. */
  async function startCli(targetPort, args) {
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const child = spawnChild(process.execPath, [
        CLI_PATH,
        ...args,
        '-p',
        `${V4}:${port}:${V4}:${targetPort}`,
      ]);
      try {
        await child.waitLine(/^portsplice: mapping 1 tcp /);
        return Object.assign(child, { port });
      } catch (err) {
        child.kill('SIGKILL');
        if (attempt < 3 && /EADDRINUSE/.test(child.err)) continue;
        throw err;
      }
    }
  }

  /** Resolve once `port` refuses connections (the listener closed). */
  function refusedSoon(port, timeout = 2000) {
    return waitFor(
      () =>
        expectRefused(port).then(
          () => true,
          () => false,
        ),
      { timeout, interval: 50, what: `port ${port} refuses new connections` },
    );
  }

  for (const engine of ['splice', 'stream']) {
    test(
      `CLI [${engine}]: stops accepting, lets 3 transfers finish byte-exact, exits 0 long before --drain-timeout`,
      { timeout: 40000 },
      async (t) => {
        const response = randomPayload(1 * MiB + 3);
        const received = [];
        const server = await startServer((socket) => {
          const chunks = [];
          socket.on('data', (c) => chunks.push(c));
          socket.on('end', () => {
            // A probe of refusedSoon() may get in before the listener closes: it sends nothing.
            if (chunks.length > 0) received.push(sha256(Buffer.concat(chunks)));
            socket.end(response);
          });
        });
        let cli;
        const sockets = [];
        t.after(async () => {
          for (const s of sockets) s.destroy();
          cli?.kill('SIGKILL');
          await closeServers(server);
        });
        cli = await startCli(server.port, ['--engine', engine, '--drain-timeout', '10']);
        const uploads = [0, 1, 2].map(() => randomPayload(8 * MiB + 5));
        const transfers = uploads.map(async (upload) => {
          const socket = await connect(cli.port);
          sockets.push(socket);
          const got = collect(socket);
          // Paced: 32 pieces, 40 ms apart, so that SIGTERM arrives in the middle.
          const piece = upload.length / 32;
          for (let i = 0; i < 32; i++) {
            socket.write(upload.subarray(Math.floor(i * piece), Math.floor((i + 1) * piece)));
            await sleep(40);
          }
          socket.end();
          return got;
        });
        await sleep(300);
        const t0 = Date.now();
        cli.kill('SIGTERM');
        await refusedSoon(cli.port);
        const results = await withTimeout(Promise.all(transfers), 20000, 'the three transfers');
        const finished = Date.now();
        for (const res of results) {
          assert.equal(res.bytes, response.length);
          assert.equal(res.sha256, sha256(response));
        }
        assert.deepEqual(
          received.sort(),
          uploads.map((u) => sha256(u)).sort(),
          'every upload arrived byte-exact',
        );
        const exit = await cli.waitExit(5000);
        assert.deepEqual(exit, { code: 0, signal: null }, cli.describe());
        assert.ok(Date.now() - finished < 3000, `exited ${Date.now() - finished} ms after the last transfer`);
        assert.ok(Date.now() - t0 < 10000, 'exited before the drain timeout');
        for (const s of sockets) assert.deepEqual(s.errors, [], 'drained connections end cleanly');
      },
    );

    test(
      `CLI [${engine}]: a transfer that cannot finish is reset when --drain-timeout passes, then exit 0`,
      { timeout: 30000 },
      async (t) => {
        let targetSide;
        // Never reads (until the end of the test): the transfer cannot finish. (Later connections
        // are refusedSoon()'s probes.)
        const server = await startPausedServer((socket) => (targetSide ??= socket));
        let cli;
        let client;
        t.after(async () => {
          client?.destroy();
          cli?.kill('SIGKILL');
          await server.close();
        });
        cli = await startCli(server.port, ['--engine', engine, '--drain-timeout', '1']);
        client = await connect(cli.port);
        const push = pushPattern(client, TO_TARGET, 1024);
        await waitFor(() => push.accepted >= 1 * MiB && targetSide, {
          timeout: 10000,
          what: 'transfer under way',
        });
        const failed = waitError(client, 5000, 'the client is reset at the drain timeout');
        const t0 = Date.now();
        cli.kill('SIGTERM');
        await refusedSoon(cli.port);
        const err = await failed;
        const took = Date.now() - t0;
        assert.equal(err.code, 'ECONNRESET', `client error: ${err.message}`);
        assert.ok(took >= 900, `the connection was given the drain timeout (reset after ${took} ms)`);
        // The target reads what reached it, then the reset.
        const obs = observe(targetSide, TO_TARGET);
        assert.equal(await obs.outcome(5000, 'the target sees the reset'), 'ECONNRESET');
        assert.ok(obs.checker.ok, obs.checker.describe());
        const exit = await cli.waitExit(5000);
        assert.deepEqual(exit, { code: 0, signal: null }, cli.describe());
        assert.ok(Date.now() - t0 < 4000, `exited ${Date.now() - t0} ms after SIGTERM`);
      },
    );
  }
});
