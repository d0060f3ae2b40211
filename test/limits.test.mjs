// @test-tag slow: about 90 s
// Limits: backpressure toward slow readers with bounded memory, idle and half-open
// connections that cost no CPU, file descriptors and pipes running out, and 10,000 concurrent
// connections through one engine thread. The proxy runs in a child process where its memory,
// CPU time and descriptors are measured through /proc.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';

import { createProxy, dockerProxyPath } from '../dist/index.js';
import {
  V4,
  MiB,
  sleep,
  sha256,
  randomPayload,
  withTimeout,
  waitFor,
  startServer,
  startEchoServer,
  startStreamServer,
  exchange,
  openConnections,
  pingEcho,
  addMapping,
  waitIdle,
  safeClose,
  closeServers,
  checkByteInvariants,
  show,
} from './helpers.mjs';
import {
  PatternChecker,
  patternBase,
  pushPattern,
  rawRead,
  connectPaused,
  startPausedServer,
  startProxyChild,
  startBinary,
  spawnNode,
  killChildren,
  cpuOver,
  cpuSeconds,
  fdCount as proxyFds,
  fdKinds,
  hardFdLimit,
} from './fault-helpers.mjs';

after(killChildren);

const sysctl = (name) =>
  readFileSync(`/proc/sys/${name.replaceAll('.', '/')}`, 'utf8')
    .trim()
    .split(/\s+/)
    .map(Number);

describe('backpressure toward readers that read nothing', () => {
  const BLOCKS = 256; // of 1 MiB + 7 bytes: 256 MiB offered each way
  const UP = patternBase(1 * MiB + 7, 11);
  const DOWN = patternBase(1 * MiB + 13, 12);
  // What the kernel may hold along one direction: the sender's send buffer, the proxy's receive
  // and send buffers, the reader's receive buffer (all at their sysctl maximum), plus a pipe.
  const [, , wmemMax] = sysctl('net.ipv4.tcp_wmem');
  const [, , rmemMax] = sysctl('net.ipv4.tcp_rmem');
  const kernelBound = Math.min(2 * wmemMax + 2 * rmemMax + 2 * MiB, 128 * MiB);

  const configs = [
    { name: 'splice', proxy: { engine: 'splice', threads: 1 } },
    {
      name: 'splice with maxPipes: 1 (one direction copies)',
      proxy: { engine: 'splice', threads: 1, maxPipes: 1 },
    },
    { name: 'stream', proxy: { engine: 'stream' } },
  ];
  for (const config of configs) {
    test(
      `${config.name}: the senders block, the proxy's memory stays flat, then all 2 x 256 MiB arrive in order`,
      { timeout: 90000 },
      async (t) => {
        let target;
        const server = await startPausedServer((socket) => (target ??= socket));
        const pc = await startProxyChild({ proxy: config.proxy, targets: [server.port] });
        let client;
        t.after(async () => {
          client?.destroy();
          pc.child.kill('SIGKILL');
          await server.close();
        });
        client = await connectPaused(pc.ports[0]);
        await waitFor(() => target, { what: 'the target side connected' });
        const atClient = new PatternChecker(DOWN);
        const atTarget = new PatternChecker(UP);
        const clientReader = rawRead(client, (c) => atClient.update(c));
        const targetReader = rawRead(target, (c) => atTarget.update(c));
        clientReader.pause();
        targetReader.pause();
        const rss0 = pc.rss();
        const up = pushPattern(client, UP, BLOCKS, { end: true });
        const down = pushPattern(target, DOWN, BLOCKS, { end: true });

        // Nobody reads for 3 s.
        let maxRss = rss0;
        const sampleRss = setInterval(() => (maxRss = Math.max(maxRss, pc.rss())), 50);
        let early;
        try {
          await sleep(2000);
          early = { up: up.accepted, down: down.accepted };
          await sleep(1000);
        } finally {
          clearInterval(sampleRss);
        }
        const late = { up: up.accepted, down: down.accepted };
        const growth = maxRss - rss0;
        const detail = `accepted after 2 s ${show(early)}, after 3 s ${show(late)}; RSS ${rss0} -> max ${maxRss}`;
        assert.ok(late.up > 0 && late.down > 0, `data moved at first: ${detail}`);
        assert.ok(late.up - early.up <= UP.length, `the client's writes are blocked: ${detail}`);
        assert.ok(late.down - early.down <= DOWN.length, `the target's writes are blocked: ${detail}`);
        assert.ok(
          late.up < kernelBound,
          `client->target: at most socket buffers + a pipe taken (${kernelBound}): ${detail}`,
        );
        assert.ok(
          late.down < kernelBound,
          `target->client: at most socket buffers + a pipe taken (${kernelBound}): ${detail}`,
        );
        assert.ok(
          growth < 32 * MiB,
          `the proxy's RSS grew by ${(growth / MiB).toFixed(1)} MiB (bound 32): ${detail}`,
        );
        t.diagnostic(detail);

        // The readers wake up: everything arrives, in order, then the FIN.
        clientReader.resume();
        targetReader.resume();
        const total = BLOCKS * UP.length;
        const totalDown = BLOCKS * DOWN.length;
        const [endAtClient, endAtTarget] = await withTimeout(
          Promise.all([clientReader.ended, targetReader.ended]),
          60000,
          'both directions delivered',
          () => `at client ${atClient.describe()}, at target ${atTarget.describe()}`,
        );
        assert.ok(atTarget.ok, `client -> target: ${atTarget.describe()}`);
        assert.ok(atClient.ok, `target -> client: ${atClient.describe()}`);
        assert.equal(atTarget.bytes, total, 'client -> target complete');
        assert.equal(atClient.bytes, totalDown, 'target -> client complete');
        assert.equal(endAtTarget, 'fin');
        assert.equal(endAtClient, 'fin');

        const st = await pc.waitStats((s) => s.connections.active === 0, 'the connection closed');
        assert.equal(st.bytes.toTarget, BigInt(total));
        assert.equal(st.bytes.toClient, BigInt(totalDown));
        checkByteInvariants(assert, config.proxy.engine, st);
        if (config.proxy.maxPipes === 1) {
          assert.ok(st.bytes.copied > 0n, `the copy fallback was used: ${show(st.bytes)}`);
          assert.ok(st.bytes.spliced > 0n, `and the one pipe: ${show(st.bytes)}`);
        } else if (config.proxy.engine === 'splice') {
          assert.equal(st.bytes.copied, 0n, `nothing copied with pipes to spare: ${show(st.bytes)}`);
        }
      },
    );
  }
});

/**
 * Targets for the idle test: `hold` echoes but never forwards a FIN (so a client's half-close
 * leaves the connection half-open), `closer` sends FIN at once and records what it receives.
 */
async function startIdleTargets() {
  const hold = await startServer((socket) => socket.on('data', (d) => socket.write(d)));
  const closer = await startServer((socket) => {
    socket.received = '';
    socket.on('data', (d) => (socket.received += d));
    socket.end();
  });
  return { hold, closer };
}

/** Proxies for the idle test, in child processes: `ports` [to hold, to closer], `pids`, `stats?`. */
async function startIdleProxies(kind, targets) {
  if (kind === 'binary') {
    const a = await startBinary(dockerProxyPath, targets.hold.port);
    const b = await startBinary(dockerProxyPath, targets.closer.port);
    return {
      ports: [a.port, b.port],
      pids: [a.pid, b.pid],
      kill: () => [a, b].forEach((c) => c.kill('SIGKILL')),
    };
  }
  const pc = await startProxyChild({
    proxy: { engine: kind, threads: 1 },
    targets: [targets.hold.port, targets.closer.port],
  });
  return { ports: pc.ports, pids: [pc.pid], pc, kill: () => pc.child.kill('SIGKILL') };
}

for (const kind of ['splice', 'stream', 'binary']) {
  test(
    `[${kind}] 200 idle and half-open connections stay open and cost no CPU`,
    { timeout: 60000 },
    async (t) => {
      const targets = await startIdleTargets();
      const proxies = await startIdleProxies(kind, targets);
      const all = [];
      t.after(async () => {
        for (const s of all) s.destroy();
        proxies.kill();
        await closeServers(targets.hold, targets.closer);
      });
      const [toHold, toCloser] = proxies.ports;
      const silent = await openConnections(100, toHold); // never send anything
      const halfClosed = await openConnections(50, toHold); // send FIN, keep reading
      const targetClosed = await openConnections(50, toCloser); // get FIN, keep writing
      all.push(...silent, ...halfClosed, ...targetClosed);
      for (const s of [...silent, ...halfClosed]) s.resume();
      for (const s of halfClosed) s.end();
      let ended = 0;
      for (const s of targetClosed) s.once('end', () => ended++).resume();
      await waitFor(() => ended === 50, { timeout: 10000, what: 'the 50 target FINs at the clients' });
      await waitFor(() => [...targets.hold.sockets].filter((s) => s.readableEnded).length === 50, {
        timeout: 10000,
        what: 'the 50 client FINs at the target',
      });
      await waitFor(() => targets.hold.sockets.size === 150 && targets.closer.connectionCount === 50, {
        timeout: 10000,
        what: 'every connection at its target',
      });
      if (proxies.pc) {
        await proxies.pc.waitStats((s) => s.connections.active === 150, '150 active on mapping 1', {
          i: 0,
        });
        await proxies.pc.waitStats((s) => s.connections.active === 50, '50 active on mapping 2', { i: 1 });
      }
      await sleep(200);

      const before = proxies.pids.map(cpuSeconds);
      await sleep(2000);
      const used = proxies.pids.map((pid, i) => cpuSeconds(pid) - before[i]).reduce((a, b) => a + b, 0);
      assert.ok(used < 0.3, `the proxy used ${used.toFixed(2)} s of CPU in 2 s with 200 idle connections`);
      t.diagnostic(`CPU over 2 s with 200 idle connections: ${used.toFixed(2)} s`);

      // Still open, and each still works in the direction that is open.
      for (const s of all) assert.deepEqual(s.errors, [], 'no client connection failed');
      if (proxies.pc) {
        const st = await proxies.pc.mappingStats(0);
        assert.equal(st.connections.active, 150, show(st.connections));
      }
      for (const s of silent.slice(0, 20)) await pingEcho(s);
      const late = [...targets.hold.sockets].filter((s) => s.readableEnded);
      const gotLate = halfClosed.map(
        (s) => new Promise((resolve) => s.once('data', (d) => resolve(d.toString()))),
      );
      for (const t of late) t.write('late');
      assert.deepEqual(
        await withTimeout(Promise.all(gotLate), 5000, 'data toward half-closed clients'),
        halfClosed.map(() => 'late'),
      );
      for (const s of targetClosed) s.write('late');
      await waitFor(() => [...targets.closer.sockets].filter((t) => t.received === 'late').length === 50, {
        timeout: 5000,
        what: 'data from clients whose target half-closed',
      });
    },
  );
}

for (const kind of ['splice', 'stream', 'binary']) {
  test(
    `[${kind}] out of file descriptors (ulimit -n 64): accepts refused or deferred, no busy loop, service resumes`,
    { timeout: 60000 },
    async (t) => {
      const LIMIT = 64;
      const echo = await startEchoServer();
      let proxy;
      const clients = [];
      t.after(async () => {
        for (const c of clients) c.socket.destroy();
        proxy?.child.kill('SIGKILL');
        await closeServers(echo);
      });
      if (kind === 'binary') {
        const child = await startBinary(dockerProxyPath, echo.port, { ulimitFds: LIMIT });
        proxy = { pid: child.pid, port: child.port, child };
      } else {
        const pc = await startProxyChild({
          proxy: { engine: kind, threads: 1 },
          targets: [echo.port],
          ulimitFds: LIMIT,
        });
        proxy = { pid: pc.pid, port: pc.ports[0], child: pc.child, pc };
      }
      assert.equal(hardFdLimit(proxy.pid), LIMIT, 'the proxy runs with the low limit');

      /** A client: `state` is 'connecting', 'open' (no answer yet), 'echoed', 'reset' or 'bad'. */
      const open = (i) => {
        const text = `hello ${i}\n`;
        const c = {
          socket: net.connect({ port: proxy.port, host: V4 }),
          state: 'connecting',
          got: '',
          text,
        };
        c.socket.setEncoding('utf8');
        c.socket.on('connect', () => {
          c.state = 'open';
          c.socket.write(text);
        });
        c.socket.on('data', (d) => {
          c.got += d;
          if (c.got === text) c.state = 'echoed';
          else if (!text.startsWith(c.got)) c.state = 'bad';
        });
        c.socket.on('error', (err) => {
          // EPIPE: the reset came while the client was writing.
          const reset = err.code === 'ECONNRESET' || err.code === 'EPIPE';
          if (c.state !== 'echoed') c.state = reset ? 'reset' : `error ${err.code}`;
        });
        // A FIN with nothing before it is a refusal too; a FIN after part of the echo is not.
        c.socket.on('end', () => {
          if (c.state !== 'echoed') c.state = c.got === '' ? 'refused' : 'bad';
        });
        clients.push(c);
        return c;
      };
      const tally = () => {
        const t = {};
        for (const c of clients) t[c.state] = (t[c.state] ?? 0) + 1;
        return t;
      };
      for (let i = 0; i < 80; i++) open(i);
      // Settled: no client is still connecting, and the proxy is out of descriptors.
      await waitFor(() => clients.every((c) => c.state !== 'connecting'), {
        timeout: 10000,
        what: 'every client connected or refused',
        describe: () => show(tally()),
      });
      await sleep(500);
      const first = tally();
      assert.ok(first.echoed > 0, `some connections are served: ${show(first)}`);
      assert.ok(first.echoed < 80, `the limit was reached: ${show(first)}`);
      for (const state of Object.keys(first)) {
        assert.ok(
          ['echoed', 'open', 'reset', 'refused'].includes(state),
          `client state ${state}: ${show(first)}`,
        );
      }

      const cpu = await cpuOver(proxy.pid, 2000);
      assert.ok(
        cpu < 0.3,
        `the proxy used ${cpu.toFixed(2)} s of CPU in 2 s while out of descriptors (${show(first)})`,
      );
      assert.ok(proxy.child.alive(), 'the proxy is still running');
      t.diagnostic(
        `out of descriptors: ${show(first)}, ${proxyFds(proxy.pid)} fds, CPU over 2 s ${cpu.toFixed(2)} s`,
      );

      // Free descriptors, a few at a time: waiting connections are served or refused, none hangs.
      await waitFor(
        () => {
          for (const c of clients) if (c.state === 'echoed') c.socket.destroy();
          return clients.every((c) => c.state !== 'open') ? true : null;
        },
        {
          timeout: 15000,
          interval: 200,
          what: 'every waiting connection served or refused',
          describe: () => show(tally()),
        },
      );
      const second = tally();
      t.diagnostic(`after freeing descriptors: ${show(second)}`);
      assert.equal(second.bad, undefined, `no connection got a wrong or truncated echo: ${show(second)}`);
      for (const c of clients) c.socket.destroy();

      // Normal service once descriptors are free.
      if (proxy.pc) await proxy.pc.waitStats((s) => s.connections.active === 0, 'every connection closed');
      for (let i = 0; i < 10; i++) {
        const got = await exchange(proxy.port, V4, Buffer.from(`after ${i}`), {
          keep: true,
          timeout: 5000,
        });
        assert.equal(got.data.toString(), `after ${i}`);
      }
      const burst = await openConnections(10, proxy.port);
      try {
        for (const s of burst) await pingEcho(s);
      } finally {
        for (const s of burst) s.destroy();
      }
      assert.ok(proxy.child.alive(), 'the proxy is still running');
    },
  );
}

test(
  'pipes exhausted (maxPipes: 2, 20 concurrent transfers): the rest is copied, every byte arrives, pipes stay within the limit',
  { timeout: 60000 },
  async (t) => {
    const response = randomPayload(4 * MiB + 1);
    const server = await startStreamServer(response);
    const pipesBefore = fdKinds().pipe ?? 0;
    const proxy = createProxy({ engine: 'splice', threads: 1, maxPipes: 2 });
    let maxPipes = 0;
    const sampler = setInterval(
      () => (maxPipes = Math.max(maxPipes, (fdKinds().pipe ?? 0) - pipesBefore)),
      5,
    );
    t.after(async () => {
      clearInterval(sampler);
      await safeClose(proxy);
      await closeServers(server);
    });
    const m = await addMapping(proxy, server.port);
    const uploads = Array.from({ length: 20 }, (_, i) => randomPayload(4 * MiB + i));
    const results = await withTimeout(
      Promise.all(uploads.map((u) => exchange(m.listen.port, V4, u, { timeout: 30000 }))),
      40000,
      '20 concurrent transfers',
    );
    clearInterval(sampler);
    for (const res of results) {
      assert.equal(res.bytes, response.length);
      assert.equal(res.sha256, sha256(response));
    }
    await waitFor(() => server.results.length === 20, { what: 'the target saw every upload end' });
    assert.deepEqual(
      server.results.map((r) => r.sha256).sort(),
      uploads.map((u) => sha256(u)).sort(),
      'every upload arrived byte-exact',
    );
    const st = await waitIdle(proxy, m);
    const total = uploads.reduce((a, u) => a + u.length, 0);
    assert.equal(st.bytes.toTarget, BigInt(total));
    assert.equal(st.bytes.toClient, BigInt(20 * response.length));
    checkByteInvariants(assert, 'splice', st);
    assert.ok(st.bytes.copied > 0n, `the copy fallback carried bytes: ${show(st.bytes)}`);
    assert.ok(st.bytes.spliced > 0n, `the two pipes carried bytes: ${show(st.bytes)}`);
    assert.ok(maxPipes <= 2 * 2, `at most 2 pipes (4 descriptors) at once; saw ${maxPipes} pipe descriptors`);
  },
);

test(
  '10,000 concurrent connections through one engine thread (splice, threads: 1)',
  { timeout: 120000 },
  async (t) => {
    // The proxy holds two descriptors per connection; it cannot go past its hard limit.
    const hard = hardFdLimit();
    const N = Math.min(10000, Math.floor((hard - 400) / 2));
    if (N < 10000) {
      t.diagnostic(
        `RLIMIT_NOFILE hard limit ${hard}: ${N} connections (10,000 need ${2 * 10000 + 400} descriptors in the proxy)`,
      );
    }
    const echoChild = spawnNode(`
    import net from 'node:net';
    const server = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
    server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => console.log('PORT ' + server.address().port));
  `);
    const sockets = [];
    try {
      const echoPort = Number((await echoChild.waitLine(/^PORT (\d+)$/))[1]);
      const pc = await startProxyChild({ proxy: { engine: 'splice', threads: 1 }, targets: [echoPort] });
      const fdsBefore = pc.fds();
      const t0 = Date.now();
      for (let i = 0; i < N; i += 500) {
        sockets.push(...(await openConnections(Math.min(500, N - i), pc.ports[0], V4, { timeout: 20000 })));
      }
      const st = await pc.waitStats((s) => s.connections.active === N, `${N} connections active`, {
        timeout: 20000,
      });
      assert.equal(st.connections.accepted, N);
      assert.ok(
        pc.fds() >= fdsBefore + 2 * N,
        `the proxy holds both sides of every connection (${pc.fds()} fds)`,
      );

      // Every connection exchanges its own payload, all at once.
      let wrong = 0;
      await withTimeout(
        Promise.all(
          sockets.map(
            (s, i) =>
              new Promise((resolve, reject) => {
                const text = `connection ${i} `.padEnd(64, '.');
                let got = '';
                s.setEncoding('utf8');
                s.on('data', (d) => {
                  got += d;
                  if (got.length >= text.length) {
                    if (got !== text) wrong++;
                    resolve();
                  }
                });
                s.once('error', reject);
                s.write(text);
              }),
          ),
        ),
        30000,
        `${N} echoes`,
      );
      assert.equal(wrong, 0, 'every connection got exactly its own payload back');
      // The counters are bumped right after each write: the last ones may trail the echoes a little.
      const after = await pc.waitStats(
        (s) => s.bytes.toTarget === BigInt(64 * N) && s.bytes.toClient === BigInt(64 * N),
        `${64 * N} bytes counted each way`,
      );
      assert.equal(after.connections.failed, 0);

      for (const s of sockets) s.destroy();
      await pc.waitStats((s) => s.connections.active === 0, 'every connection closed', { timeout: 20000 });
      // Idle pipes stay pooled (up to 64 per thread); sockets do not.
      await waitFor(() => pc.fds() <= fdsBefore + 2 * 64, {
        timeout: 5000,
        what: 'the proxy’s descriptors released',
        describe: () => `${pc.fds()} open, ${fdsBefore} before`,
      });
      t.diagnostic(`${N} connections opened and echoed in ${Date.now() - t0} ms`);
    } finally {
      for (const s of sockets) s.destroy();
      echoChild.kill('SIGKILL');
    }
  },
);
