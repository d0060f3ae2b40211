// @test-tag timing: waits for connections held in the backlog, and many clients across threads
// maxConnections: at the limit the proxy stops accepting, so a new client's handshake is done
// by the kernel and the connection waits in the listen backlog with no byte forwarded and no
// connection to the target, until an open connection ends; then it proceeds. Both engines
// (the stream engine holds the waiting connections itself), one and several engine threads.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { createProxy } from '../dist/index.js';
import { parseArgs } from '../dist/cli/args.js';
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
  waitIdle,
  waitPeerClosed,
  safeClose,
  closeServers,
  withTimeout,
  waitFor,
} from './helpers.mjs';

/** Connections waiting in the accept queue of the listener on 127.0.0.1:port (ss: Recv-Q). */
function acceptQueue(port) {
  // Without the sanitizers' LD_PRELOAD (scripts/sanitize.sh), which would fail ss on its leaks.
  const env = { ...process.env, LD_PRELOAD: '' };
  const out = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8', env }).trim();
  assert.ok(out, `no listener on port ${port}`);
  return Number(out.split(/\s+/)[1]);
}

/** Bytes received on `socket` so far (starts counting now). */
function received(socket) {
  const got = { bytes: 0 };
  socket.on('data', (chunk) => (got.bytes += chunk.length));
  return got;
}

for (const engine of ENGINES) {
  describe(`maxConnections [${engine}]`, () => {
    test('a third client waits, unforwarded, until one of two ends, then proceeds', async (t) => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine, threads: 1 });
      t.after(() => Promise.all([safeClose(proxy), closeServers(echo)]));
      const m = await addMapping(proxy, echo.port, { maxConnections: 2 });

      const first = await connect(m.listen.port);
      const second = await connect(m.listen.port);
      await pingEcho(first, Buffer.from('one\n'));
      await pingEcho(second, Buffer.from('two\n'));
      let s = statsOf(proxy, m);
      assert.equal(s.connections.limitReached, 1, 'the second connection filled the mapping');

      // The handshake completes in the kernel; the bytes sent are not forwarded.
      const third = await connect(m.listen.port);
      const got = received(third);
      third.write('three\n');
      await sleep(300);
      assert.equal(got.bytes, 0, 'nothing is forwarded while the mapping is full');
      assert.equal(echo.connectionCount, 2, 'the target sees no third connection');
      s = statsOf(proxy, m);
      assert.deepEqual(
        [s.connections.accepted, s.connections.active, s.connections.limitReached],
        [2, 2, 1],
        'the waiting connection is neither accepted nor active',
      );
      if (engine === 'splice') {
        assert.equal(acceptQueue(m.listen.port), 1, 'the waiting connection is in the kernel backlog');
      }

      first.destroy();
      await waitFor3(got, 'the third client echoed once the first closed');
      assert.equal(echo.connectionCount, 3);
      s = await waitStats(proxy, m, (x) => x.connections.accepted === 3, 'accepted 3');
      assert.equal(s.connections.active, 2);
      assert.equal(s.connections.limitReached, 2, 'the third connection filled it again');
      if (engine === 'splice') assert.equal(acceptQueue(m.listen.port), 0);

      // Below the limit, accepting goes on as usual.
      second.end();
      third.end();
      await waitIdle(proxy, m);
      const fourth = await connect(m.listen.port);
      const echoed = await pingEcho(fourth, Buffer.from('four\n'));
      assert.equal(echoed.toString(), 'four\n');
      fourth.destroy();
    });

    async function waitFor3(got, what) {
      const start = Date.now();
      while (got.bytes < 'three\n'.length) {
        if (Date.now() - start > 5000) throw new Error(`timed out: ${what} (${got.bytes} bytes)`);
        await sleep(10);
      }
    }

    test('many clients at once: never more than the limit reach the target, all are served', async (t) => {
      const threads = engine === 'splice' ? 2 : undefined;
      let concurrent = 0;
      let peak = 0;
      // Each target connection answers after 50 ms and then waits for the client's FIN, which
      // the proxy forwards before it frees the slot. A FIN and the next connection can reach
      // this process in one batch of events, handled in any order: the peak is read a little
      // later, once both have been seen (the new connection is open for 50 ms at least).
      const target = await startServer((socket) => {
        concurrent++;
        setTimeout(() => (peak = Math.max(peak, concurrent)), 20);
        socket.once('end', () => concurrent--);
        socket.once('data', () => setTimeout(() => socket.end('ok'), 50));
      });
      const proxy = createProxy({ engine, threads });
      t.after(() => Promise.all([safeClose(proxy), closeServers(target)]));
      const m = await addMapping(proxy, target.port, { maxConnections: 3 });
      const clients = await Promise.all(
        Array.from({ length: 12 }, async () => {
          const c = await connect(m.listen.port);
          const answer = new Promise((resolve, reject) => {
            let text = '';
            c.on('data', (d) => (text += d));
            c.on('end', () => {
              c.end();
              resolve(text);
            });
            c.on('error', reject);
          });
          c.write('go');
          return withTimeout(answer, 15000, 'answer through a full mapping');
        }),
      );
      assert.deepEqual(clients, Array(12).fill('ok'));
      assert.ok(peak <= 3, `at most 3 target connections at once, saw ${peak}`);
      assert.equal(peak, 3, 'the limit is used');
      const s = await waitIdle(proxy, m);
      assert.equal(s.connections.accepted, 12);
      assert.ok(s.connections.limitReached >= 1, `limitReached ${s.connections.limitReached}`);
    });

    test('a waiting connection is reset when its mapping is removed', async (t) => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine, threads: 1 });
      t.after(() => Promise.all([safeClose(proxy), closeServers(echo)]));
      const m = await addMapping(proxy, echo.port, { maxConnections: 1 });
      const open = await connect(m.listen.port);
      await pingEcho(open);
      const waiting = await connect(m.listen.port);
      await sleep(100);
      await withTimeout(proxy.remove(m), 5000, 'remove');
      const how = await waitPeerClosed(waiting, 3000, 'waiting connection closed by remove');
      assert.equal(how.how, 'error', `reset expected, got ${how.how}`);
      assert.equal(how.error.code, 'ECONNRESET');
      assert.equal(echo.connectionCount, 1, 'the waiting connection never reached the target');
      open.destroy();
    });
    test('with acceptProxyProtocol a client reading its header holds the slot; the next waits, then gets its header read', async (t) => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine, threads: 1 });
      t.after(() => Promise.all([safeClose(proxy), closeServers(echo)]));
      const m = await addMapping(proxy, echo.port, { maxConnections: 1, acceptProxyProtocol: true });
      const silent = await connect(m.listen.port); // Sends no header: holds the only slot.
      await waitStats(proxy, m, (s) => s.connections.active === 1, 'the silent client admitted');
      const waiting = await connect(m.listen.port);
      const got = received(waiting);
      waiting.write('PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000\r\nhi\n');
      await sleep(300);
      assert.equal(got.bytes, 0, 'nothing forwarded while the header reader holds the slot');
      assert.equal(echo.connectionCount, 0);
      silent.destroy();
      await waitFor(() => got.bytes === 3, { what: 'the waiting client forwarded once the slot is free' });
      const s = statsOf(proxy, m);
      assert.deepEqual([s.connections.limitReached, s.proxyHeaders.received], [2, 1]);
      waiting.destroy();
    });
  });
}

describe('maxConnections validation', () => {
  const proxy = createProxy({ engine: 'stream' });
  test('rejected on UDP, with the reason', async () => {
    await assert.rejects(
      proxy.add({
        proto: 'udp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: 9 },
        maxConnections: 5,
      }),
      { name: 'TypeError', message: /maxConnections applies to TCP mappings only.*udpMaxFlows/ },
    );
  });
  test('a positive integer, naming the field', async () => {
    for (const bad of [0, -1, 1.5, 2 ** 31]) {
      await assert.rejects(
        proxy.add({
          proto: 'tcp',
          listen: { host: V4, port: 0 },
          target: { host: V4, port: 9 },
          maxConnections: bad,
        }),
        { name: 'RangeError', message: /^maxConnections must be an integer from 1 to 2147483647/ },
      );
    }
    await assert.rejects(
      proxy.add({
        proto: 'tcp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: 9 },
        maxConnections: '2',
      }),
      { name: 'TypeError', message: /^maxConnections must be a number/ },
    );
  });
  test('cleanup', () => proxy.close());
});

describe('the command: --max-connections, --idle-timeout and config files', () => {
  test('the flags set both limits on the TCP mappings only, --idle-timeout in seconds', () => {
    const o = parseArgs([
      '-p',
      '8080:10.0.0.2:80',
      '-p',
      '5353:10.0.0.2:53/udp',
      '--max-connections',
      '100',
      '--idle-timeout=60',
    ]);
    const [tcp, udp] = o.mappings.map((m) => m.options);
    assert.equal(tcp.maxConnections, 100);
    assert.equal(tcp.idleTimeoutMs, 60000);
    assert.equal(udp.maxConnections, undefined);
    assert.equal(udp.idleTimeoutMs, undefined);
  });
  test('bad values name the flag and the library field', () => {
    for (const bad of ['0', '-1', '1.5', '3000000000']) {
      assert.throws(() => parseArgs(['-p', '1:1.1.1.1:1', `--max-connections=${bad}`]), {
        name: 'UsageError',
        message: new RegExp(
          `^--max-connections ${bad}: maxConnections must be an integer from 1 to 2147483647`,
        ),
      });
    }
    assert.throws(() => parseArgs(['-p', '1:1.1.1.1:1', '--max-connections', 'x']), {
      name: 'UsageError',
      message: /^--max-connections x: maxConnections must be a number/,
    });
    assert.throws(() => parseArgs(['-p', '1:1.1.1.1:1', '--idle-timeout', '0']), {
      name: 'UsageError',
      message: /^--idle-timeout 0: idleTimeoutMs must be an integer from 1/,
    });
    assert.throws(() => parseArgs(['-p', '1:1.1.1.1:1', '--idle-timeout', 'soon']), {
      name: 'UsageError',
      message: /^--idle-timeout must be a number of seconds, got "soon"$/,
    });
    assert.throws(() => parseArgs(['-p', '1:1.1.1.1:1/udp', '--max-connections', '5']), {
      name: 'UsageError',
      message: /^--max-connections 5: applies to tcp mappings, and there are none/,
    });
  });
  test('config files take maxConnections and idleTimeoutMs per mapping, TCP only; flags fill in', () => {
    const file = (mapping) => () => JSON.stringify([mapping]);
    const tcp = { listen: { port: 1 }, target: { host: '10.0.0.2', port: 2 } };
    const o = parseArgs(['--config', 'c.json'], file({ ...tcp, maxConnections: 7, idleTimeoutMs: 900 }));
    assert.equal(o.mappings[0].options.maxConnections, 7);
    assert.equal(o.mappings[0].options.idleTimeoutMs, 900);
    const filled = parseArgs(
      ['--config', 'c.json', '--max-connections', '3', '--idle-timeout', '2'],
      file({ ...tcp, maxConnections: 7 }),
    );
    assert.equal(filled.mappings[0].options.maxConnections, 7, "the file's own value wins");
    assert.equal(filled.mappings[0].options.idleTimeoutMs, 2000);
    assert.throws(
      () => parseArgs(['--config', 'c.json'], file({ ...tcp, proto: 'udp', idleTimeoutMs: 900 })),
      { name: 'UsageError', message: /c\.json: mappings\[0\]\.idleTimeoutMs applies to TCP mappings only/ },
    );
    assert.throws(() => parseArgs(['--config', 'c.json'], file({ ...tcp, maxConnections: 0 })), {
      name: 'UsageError',
      message: /c\.json: mappings\[0\]\.maxConnections must be an integer from 1/,
    });
  });
});
