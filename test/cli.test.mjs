// @test-tag slow: about 25 s
// The `portsplice` command as a child process: forwarding with -p (single ports, ranges, UDP,
// IPv4 and IPv6 without a host IP, a host range to one port, a config file), --json, --metrics, shutdown on signals with draining,
// docker-proxy's fd 3 status pipe, bad arguments and all-or-nothing startup.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {
  V4,
  V6,
  sleep,
  withTimeout,
  waitFor,
  freePort,
  startServer,
  startEchoServer,
  connect,
  exchange,
  expectRefused,
  waitPeerClosed,
  pingEcho,
  closeServers,
} from './helpers.mjs';
import { createProxy } from '../dist/index.js';
import { parsePortSpec } from '../dist/cli/publish.js';
import { openSpec } from '../dist/cli/reload.js';
import {
  spawnCli,
  startCli,
  stopCli,
  killAll,
  canBind,
  freeUdpPort,
  freeRange,
  startServerRange,
  startUdpEcho,
  udpRoundTrip,
} from './cli-helpers.mjs';

const servers = [];
after(async () => {
  await killAll();
  await closeServers(...servers);
});

async function echoServer(opts) {
  const s = await startEchoServer(opts);
  servers.push(s);
  return s;
}

describe('forwarding', () => {
  for (const engine of ['splice', 'stream']) {
    test(`-p 127.0.0.1:PORT:127.0.0.1:TPORT forwards (${engine} engine)`, async () => {
      const echo = await echoServer();
      const port = await freePort();
      const { child, ports } = await startCli(['--engine', engine, '-p', `${V4}:${port}:${V4}:${echo.port}`]);
      assert.deepEqual(ports, [port]);
      assert.match(
        child.lines[0],
        new RegExp(`tcp 127\\.0\\.0\\.1:${port} -> 127\\.0\\.0\\.1:${echo.port}$`),
      );
      const payload = Buffer.from('hello through portsplice\n'.repeat(1000));
      const got = await exchange(port, V4, payload, { keep: true });
      assert.ok(got.data.equals(payload), 'echoed payload is byte-exact');
      const exit = await stopCli(child);
      assert.deepEqual([exit.code, exit.signal], [0, null], child.describe());
      assert.equal(child.err, '', 'nothing on stderr');
    });
  }

  test('a range of 3 ports maps each port to its counterpart', async () => {
    const targets = await startServerRange(3, (i) => (socket) => socket.end(`server ${i}\n`));
    servers.push(targets);
    const first = await freeRange(3);
    const { child, ports } = await startCli(
      ['-p', `${V4}:${first}-${first + 2}:${V4}:${targets.first}-${targets.first + 2}`],
      3,
    );
    assert.deepEqual(ports, [first, first + 1, first + 2]);
    for (let i = 0; i < 3; i++) {
      const got = await exchange(first + i, V4, Buffer.alloc(0), { keep: true });
      assert.equal(got.data.toString(), `server ${i}\n`, `port ${first + i} reaches target ${i}`);
    }
    assert.equal((await stopCli(child)).code, 0);
  });

  test('IPv6 listen address in brackets, IPv4 target; host port 0 picks a free port', async () => {
    const echo = await echoServer();
    const { child, ports } = await startCli(['-p', `[${V6}]:0:${V4}:${echo.port}`]);
    assert.ok(ports[0] > 0);
    assert.match(child.lines[0], /tcp \[::1\]:\d+ -> 127\.0\.0\.1:\d+$/);
    const got = await exchange(ports[0], V6, Buffer.from('v6'), { keep: true });
    assert.equal(got.data.toString(), 'v6');
    assert.equal((await stopCli(child)).code, 0);
  });

  test('-p .../udp forwards datagrams both ways', async () => {
    const echo = await startUdpEcho();
    servers.push(echo);
    const port = await freeUdpPort();
    const child = spawnCli(['-p', `${V4}:${port}:${V4}:${echo.port}/udp`]);
    await child.waitLine(/^portsplice: mapping 1 udp /);
    const reply = await udpRoundTrip(port, Buffer.from('datagram'));
    assert.equal(reply.toString(), 'datagram');
    assert.equal((await stopCli(child)).code, 0);
  });

  for (const engine of ['splice', 'stream']) {
    test(`-p PORT:IP:PORT (no host IP) listens on 0.0.0.0 and [::] on one port, like docker run -p (${engine})`, async () => {
      const echo = await echoServer();
      const { child, ports } = await startCli(['--engine', engine, '-p', `:${V4}:${echo.port}`], 2);
      assert.match(child.lines[0], /^portsplice: mapping 1 tcp 0\.0\.0\.0:\d+ -> /);
      assert.match(child.lines[1], /^portsplice: mapping 2 tcp \[::\]:\d+ -> /);
      assert.ok(ports[0] > 0 && ports[1] === ports[0], `the same picked port twice: ${ports}`);
      for (const host of [V4, V6]) {
        const got = await exchange(ports[0], host, Buffer.from(`via ${host}`), { keep: true });
        assert.equal(got.data.toString(), `via ${host}`);
      }
      assert.equal((await stopCli(child)).code, 0);
    });
  }

  test('-p HOST_IP:FIRST-LAST:IP:PORT listens on the first free port of the range', async () => {
    const echo = await echoServer();
    const first = await freeRange(3);
    const busy = await startServer(() => {}, { port: first });
    servers.push(busy);
    const { child, ports } = await startCli(['-p', `${V4}:${first}-${first + 2}:${V4}:${echo.port}`]);
    assert.deepEqual(ports, [first + 1], 'the first port was taken: the next one');
    const got = await exchange(first + 1, V4, Buffer.from('range'), { keep: true });
    assert.equal(got.data.toString(), 'range');
    assert.equal((await stopCli(child)).code, 0);
  });

  test('a dual-stack host range: a port taken on [::] only is given up on both, the next one taken', async (t) => {
    const echo = await echoServer();
    const first = await freeRange(3);
    // Taken on [::] only (IPV6_V6ONLY): 0.0.0.0:first binds, then [::]:first fails.
    const busy = net.createServer();
    await new Promise((resolve, reject) => {
      busy.once('error', reject);
      busy.listen({ host: '::', port: first, ipv6Only: true }, resolve);
    });
    t.after(() => busy.close());
    const { child, ports } = await startCli(['-p', `${first}-${first + 2}:${V4}:${echo.port}`], 2);
    assert.deepEqual(ports, [first + 1, first + 1], child.describe());
    assert.ok(await canBind(first), `${first} on 127.0.0.1 was let go again`);
    for (const host of [V4, V6]) {
      const got = await exchange(first + 1, host, Buffer.from('next'), { keep: true });
      assert.equal(got.data.toString(), 'next');
    }
    assert.equal((await stopCli(child)).code, 0);
  });

  test('without IPv6 (socket(AF_INET6) fails with EAFNOSUPPORT under ipv6.disable=1), no host IP means IPv4 only, said in the log', async (t) => {
    const echo = await echoServer();
    const proxy = createProxy({ engine: 'splice' });
    t.after(() => proxy.close());
    // The kernel's answer on such a host, for the [::] listener only; everything else is real.
    const noIpv6 = {
      add: (o) =>
        o.listen.host === '::'
          ? Promise.reject(Object.assign(new Error('socket EAFNOSUPPORT'), { code: 'EAFNOSUPPORT' }))
          : proxy.add(o),
      remove: (m) => proxy.remove(m),
    };
    const [spec] = parsePortSpec(`:${V4}:${echo.port}`);
    const notes = [];
    const opened = await openSpec(noIpv6, spec, false, (line) => notes.push(line));
    assert.deepEqual(
      opened.map((m) => m.listen.host),
      ['0.0.0.0'],
    );
    const got = await exchange(opened[0].listen.port, V4, Buffer.from('v4 only'), { keep: true });
    assert.equal(got.data.toString(), 'v4 only');
    assert.deepEqual(notes, [
      `tcp 0.0.0.0:0 and [::]:0 -> ${V4}:${echo.port}: IPv6 is not available here (EAFNOSUPPORT); listening on IPv4 only`,
    ]);
  });

  test("docker-proxy's flags are refused, naming the drop-in (exit 2)", async () => {
    const port = await freePort();
    const child = spawnCli(
      ['-host-ip', V4, `-host-port=${port}`, '-container-ip', V4, '-container-port', '80'],
      { statusPipe: true },
    );
    assert.equal((await child.waitExit()).code, 2, child.describe());
    assert.match(
      child.err,
      /^portsplice: -host-ip is docker-proxy's flag: run the drop-in portsplice-docker-proxy/,
    );
    assert.ok(await canBind(port), 'nothing listens');
  });

  test('--config file with API-shaped mappings and -p strings', async (t) => {
    const echo = await echoServer();
    const [a, b] = [await freePort(), await freePort()];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portsplice-cli-'));
    const file = path.join(dir, 'ports.json');
    fs.writeFileSync(
      file,
      JSON.stringify({
        engine: 'stream',
        mappings: [
          { proto: 'tcp', listen: { host: V4, port: a }, target: { host: V4, port: echo.port } },
          `${V4}:${b}:${V4}:${echo.port}`,
        ],
      }),
    );
    t.after(async () => {
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const { child, ports } = await startCli(['--config', file], 2);
    assert.deepEqual(ports, [a, b]);
    for (const port of ports) {
      const got = await exchange(port, V4, Buffer.from(`via ${port}`), { keep: true });
      assert.equal(got.data.toString(), `via ${port}`);
    }
    assert.equal((await stopCli(child)).code, 0);
  });
});

describe('stats output', () => {
  test('--json prints parseable lines with the counters (bytes as strings)', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const child = spawnCli(['--json', '--interval', '0.1', '-p', `${V4}:${port}:${V4}:${echo.port}`]);
    const firstLine = await child.waitLine(() => true, 'the first JSON line');
    const first = JSON.parse(firstLine);
    assert.equal(typeof first.time, 'string');
    assert.ok(['splice', 'stream'].includes(first.engine));
    assert.equal(first.mappings.length, 1);
    assert.equal(first.mappings[0].listen.port, port);
    await exchange(port, V4, Buffer.alloc(12345, 1));
    const line = await child.waitLine((l) => {
      const m = JSON.parse(l).mappings[0];
      return m.bytes.toTarget === '12345' && m.bytes.toClient === '12345' && m.connections.active === 0;
    }, 'with 12345 bytes each way');
    const m = JSON.parse(line).mappings[0];
    assert.deepEqual(m.connections, {
      accepted: 1,
      active: 0,
      failed: 0,
      failedBy: { refused: 0, timeout: 0, unreachable: 0, other: 0 },
      limitReached: 0,
      idleClosed: 0,
    });
    assert.equal(m.proto, 'tcp');
    assert.deepEqual(m.target, { host: V4, port: echo.port });
    assert.equal(BigInt(m.bytes.spliced) + BigInt(m.bytes.copied), 24690n);
    for (const l of child.lines) JSON.parse(l); // every stdout line is JSON
    assert.equal((await stopCli(child)).code, 0);
    for (const l of child.lines) JSON.parse(l);
  });
  // --metrics: test/metrics.test.mjs scrapes it.
});

describe('signals', () => {
  test('SIGTERM with an idle open connection: stops accepting, exits 0 after the drain timeout', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child } = await startCli(['--drain-timeout', '1', '-p', `${V4}:${port}:${V4}:${echo.port}`]);
    const idle = await connect(port);
    await pingEcho(idle);
    const signalledAt = Date.now();
    child.kill('SIGTERM');
    // New connections are refused while the process still runs (draining).
    await waitFor(
      async () => {
        try {
          await expectRefused(port);
          return true;
        } catch {
          return false;
        }
      },
      { timeout: 2000, what: 'new connections refused' },
    );
    const exit = await child.waitExit(1000 + 4000);
    const drained = Date.now() - signalledAt;
    assert.deepEqual([exit.code, exit.signal], [0, null], child.describe());
    // The idle connection holds the drain open for its whole 1 s timeout (timers never fire
    // early; the margin is the clock's granularity), and then it ends promptly.
    assert.ok(drained >= 990, `exited ${drained} ms after SIGTERM, before the 1 s drain timeout`);
    assert.ok(drained < 1000 + 4000, `exited ${drained} ms after SIGTERM`);
    await waitPeerClosed(idle, 2000, 'idle connection closed after the drain timeout');
    idle.destroy();
  });

  test('SIGTERM while a connection is finishing: it completes and the CLI exits 0 promptly', async () => {
    let gotRequest;
    const requested = new Promise((resolve) => (gotRequest = resolve));
    const slow = await startServer((socket) => {
      socket.once('data', () => {
        gotRequest();
        setTimeout(() => socket.end('response after 300 ms\n'), 300);
      });
    });
    servers.push(slow);
    const port = await freePort();
    const { child } = await startCli(['--drain-timeout', '10', '-p', `${V4}:${port}:${V4}:${slow.port}`]);
    const socket = await connect(port);
    const chunks = [];
    socket.on('data', (c) => chunks.push(c));
    const ended = new Promise((resolve) => socket.once('end', resolve));
    socket.write('request\n');
    await withTimeout(requested, 5000, 'the request reached the server');
    const t0 = Date.now();
    child.kill('SIGTERM');
    await withTimeout(ended, 5000, 'the response to end', () => socket.destroy());
    assert.equal(Buffer.concat(chunks).toString(), 'response after 300 ms\n');
    socket.end();
    const exit = await child.waitExit(5000);
    assert.deepEqual([exit.code, exit.signal], [0, null], child.describe());
    assert.ok(Date.now() - t0 < 3000, `exited ${Date.now() - t0} ms after SIGTERM`);
  });

  test('a second signal exits at once', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child } = await startCli(['--drain-timeout', '30', '-p', `${V4}:${port}:${V4}:${echo.port}`]);
    const idle = await connect(port);
    await pingEcho(idle);
    child.kill('SIGTERM');
    await sleep(300);
    assert.equal(child.exitInfo, undefined, 'still draining after the first signal');
    const t0 = Date.now();
    child.kill('SIGINT');
    const exit = await child.waitExit(2000);
    assert.ok(Date.now() - t0 < 1500, `exited ${Date.now() - t0} ms after the second signal`);
    assert.notEqual(exit.code, 0, 'a forced exit is not a clean one');
    idle.destroy();
  });
});

describe("docker-proxy's status pipe (fd 3)", () => {
  test('writes 0\\n once listening', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const child = spawnCli(['-p', `${V4}:${port}:${V4}:${echo.port}`], { statusPipe: true });
    await child.until(() => child.status.length >= 2, 'the status on fd 3');
    assert.equal(child.status, '0\n');
    // Listening by the time it says so.
    const got = await exchange(port, V4, Buffer.from('ready'), { keep: true });
    assert.equal(got.data.toString(), 'ready');
    assert.equal((await stopCli(child)).code, 0);
    assert.equal(child.status, '0\n', 'written exactly once');
  });

  test('writes 1\\n and the error, and exits 1, when the port is in use', async () => {
    const busy = await startServer(() => {});
    servers.push(busy);
    const child = spawnCli(['-p', `${V4}:${busy.port}:${V4}:9`], { statusPipe: true });
    const exit = await child.waitExit();
    assert.equal(exit.code, 1, child.describe());
    await child.until(() => child.status.startsWith('1\n') && child.status.length > 2, 'the status on fd 3');
    assert.match(child.status, /^1\n.*(EADDRINUSE|in use)/is);
    assert.match(child.err, /EADDRINUSE|in use/i);
  });
});

describe('bad arguments', () => {
  const cases = [
    {
      name: 'bad port',
      args: (p) => ['-p', `${V4}:70000:${V4}:${p}`],
      message: /host port must be a number from 0 to 65535, got "70000"/,
    },
    {
      name: 'reversed range',
      args: (p) => ['-p', `${V4}:${p + 2}-${p}:${V4}:${p}-${p + 2}`],
      message: /reversed/,
    },
    {
      name: 'range length mismatch',
      args: (p) => ['-p', `${V4}:${p}-${p + 2}:${V4}:80-81`],
      message: /same length/,
    },
    {
      name: 'unknown flag',
      args: (p) => ['-p', `${V4}:${p}:${V4}:80`, '--frobnicate'],
      message: /unknown flag: --frobnicate/,
    },
    { name: 'missing target', args: (p) => ['-p', `${V4}:${p}:80`], message: /TARGET_IP:TARGET_PORT/ },
    {
      name: 'flag without value',
      args: (p) => ['-p', `${V4}:${p}:${V4}:80`, '--engine'],
      message: /--engine needs a value/,
    },
    { name: 'no mappings', args: () => ['--json'], message: /no mappings/ },
    {
      name: '-use-listen-fd',
      args: (p) => ['-use-listen-fd', '-p', `${V4}:${p}:${V4}:80`],
      message: /-use-listen-fd is docker-proxy's flag: run the drop-in/,
    },
    {
      name: 'a per-mapping flag out of range',
      args: (p) => ['-p', `${V4}:${p}:${V4}:80`, '--connect-timeout', '0'],
      message: /--connect-timeout 0: connectTimeoutMs must be an integer from 1/,
    },
  ];
  for (const c of cases) {
    test(`${c.name}: exit 2, says what is wrong in one line and where to look, listens on nothing`, async () => {
      const port = await freeRange(3);
      const child = spawnCli(c.args(port), { statusPipe: true });
      const exit = await child.waitExit();
      assert.equal(exit.code, 2, child.describe());
      assert.match(child.err, c.message);
      assert.match(child.err, /^portsplice: [^\n]+\nTry 'portsplice --help'\.\n$/);
      assert.equal(child.out, '');
      await child.until(() => child.status.startsWith('1\n'), 'status 1 on fd 3');
      for (let i = 0; i < 3; i++) assert.ok(await canBind(port + i), `port ${port + i} is free`);
    });
  }

  test('--help and --version exit 0', async () => {
    const help = spawnCli(['--help']);
    assert.equal((await help.waitExit()).code, 0);
    assert.match(help.out, /^Usage: portsplice/);
    const version = spawnCli(['-version']);
    assert.equal((await version.waitExit()).code, 0);
    const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    assert.equal(version.out, `portsplice ${pkg.version}\n`);
  });
});

describe('all or nothing', () => {
  test('when the second mapping cannot bind, exit 1 and the first port is free again', async () => {
    const echo = await echoServer();
    const busy = await startServer(() => {});
    servers.push(busy);
    const port = await freePort();
    const child = spawnCli([
      '-p',
      `${V4}:${port}:${V4}:${echo.port}`,
      '-p',
      `${V4}:${busy.port}:${V4}:${echo.port}`,
    ]);
    const exit = await child.waitExit();
    assert.equal(exit.code, 1, child.describe());
    assert.match(child.err, new RegExp(`cannot listen on tcp 127\\.0\\.0\\.1:${busy.port}.*mapping 2 of 2`));
    assert.match(child.err, /EADDRINUSE|in use/i);
    assert.doesNotMatch(child.err, /Usage:/, 'a runtime failure is not a usage error');
    await expectRefused(port);
    assert.ok(await canBind(port), 'the first port can be bound again');
  });

  test('a metrics port in use: exit 1 before any mapping listens', async () => {
    const busy = await startServer(() => {});
    servers.push(busy);
    const port = await freePort();
    const child = spawnCli(['--metrics', `${V4}:${busy.port}`, '-p', `${V4}:${port}:${V4}:9`]);
    const exit = await child.waitExit();
    assert.equal(exit.code, 1, child.describe());
    assert.match(child.err, /cannot serve metrics/);
    assert.ok(await canBind(port));
  });
});
