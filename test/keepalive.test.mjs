// @test-tag slow: about 30 s, waits out keep-alive probes
// TCP keep-alive on both sockets of a proxied connection: the timer the kernel runs on each
// (read with `ss -tnoep`, which shows the proxy's own sockets), the option's validation, and a
// peer that vanishes without a FIN or RST, detected and turned into a reset of the other side.
// The vanishing peer needs network namespaces (root): a client namespace, a host namespace
// running the proxy and a target namespace, joined by veth pairs with addresses from
// 198.18.0.0/15; a peer vanishes when its namespace's link goes down, so that nothing it
// would send reaches the proxy. The namespaces are deleted on every exit path.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { createProxy, dockerProxyPath } from '../dist/index.js';
import {
  V4,
  DIST_URL,
  ENGINES,
  startEchoServer,
  connect,
  pingEcho,
  addMapping,
  safeClose,
  closeServers,
} from './helpers.mjs';
import { spawnChild, killChildren, startBinary } from './fault-helpers.mjs';

after(killChildren);

/** Milliseconds from an `ss` timer such as `6.984ms`, `14sec`, `1min30sec` or `250ms`. */
function ssMs(text) {
  const m = /^(?:(\d+)min)?(?:(\d+)(?:sec|\.))?(?:(\d+)ms)?$/.exec(text);
  assert.ok(m, `cannot read the ss timer ${JSON.stringify(text)}`);
  return (Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0)) * 1000 + Number(m[3] ?? 0);
}

/**
 * The established TCP sockets of process `pid` toward `targetPort` or accepted on `listenPort`,
 * with their keep-alive timer in ms (null when there is none).
 */
function proxySockets(pid, listenPort, targetPort) {
  const out = execFileSync(
    'ss',
    ['-tnoepH', 'state', 'established', `( sport = :${listenPort} or dport = :${targetPort} )`],
    { encoding: 'utf8' },
  );
  return out
    .split('\n')
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => {
      const timer = /timer:\(keepalive,([^,]+),\d+\)/.exec(line);
      // Without a state column: Recv-Q, Send-Q, local address, peer address.
      const local = line.trim().split(/\s+/)[2];
      const side = local.endsWith(`:${listenPort}`) ? 'client' : 'target';
      return { side, keepAliveMs: timer ? ssMs(timer[1]) : null, line };
    });
}

function checkTimers(sockets, minMs, maxMs) {
  assert.equal(sockets.length, 2, `two proxy sockets expected:\n${sockets.map((s) => s.line).join('\n')}`);
  assert.deepEqual(sockets.map((s) => s.side).sort(), ['client', 'target']);
  for (const s of sockets) {
    assert.ok(
      s.keepAliveMs !== null && s.keepAliveMs > minMs && s.keepAliveMs <= maxMs,
      `the ${s.side} socket's keep-alive timer should be in (${minMs}, ${maxMs}] ms: ${s.line}`,
    );
  }
}

describe('keep-alive timers on both sockets', () => {
  for (const engine of ENGINES) {
    test(`${engine}: the configured idle time on the client and the target socket`, async (t) => {
      const server = await startEchoServer();
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      t.after(() => closeServers(server));
      const m = await addMapping(proxy, server.port, {
        keepAlive: { idleMs: 7000, intervalMs: 3000, count: 4 },
      });
      const socket = await connect(m.listen.port);
      await pingEcho(socket);
      // Just set: the timers have 7 s to run, less the time this took.
      checkTimers(proxySockets(process.pid, m.listen.port, server.port), 5000, 7000);
      socket.destroy();
    });

    test(`${engine}: keepAlive false sets none`, async (t) => {
      const server = await startEchoServer();
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      t.after(() => closeServers(server));
      const m = await addMapping(proxy, server.port, { keepAlive: false });
      const socket = await connect(m.listen.port);
      await pingEcho(socket);
      const sockets = proxySockets(process.pid, m.listen.port, server.port);
      assert.equal(sockets.length, 2, sockets.map((s) => s.line).join('\n'));
      for (const s of sockets) assert.equal(s.keepAliveMs, null, s.line);
      socket.destroy();
    });
  }

  test("splice: the default is docker-proxy's 15 s", async (t) => {
    const server = await startEchoServer();
    const proxy = createProxy({ engine: 'splice' });
    t.after(() => safeClose(proxy));
    t.after(() => closeServers(server));
    const m = await addMapping(proxy, server.port);
    const socket = await connect(m.listen.port);
    await pingEcho(socket);
    checkTimers(proxySockets(process.pid, m.listen.port, server.port), 13000, 15000);
    socket.destroy();
  });

  test("portsplice-docker-proxy: docker-proxy's 15 s on both sockets", async (t) => {
    const server = await startEchoServer();
    const child = await startBinary(dockerProxyPath, server.port);
    t.after(async () => {
      child.kill('SIGKILL');
      await closeServers(server);
    });
    const socket = await connect(child.port);
    await pingEcho(socket);
    checkTimers(proxySockets(child.pid, child.port, server.port), 13000, 15000);
    socket.destroy();
  });
});

describe('keepAlive validation', () => {
  const base = { proto: 'tcp', listen: { host: V4, port: 0 }, target: { host: V4, port: 9 } };
  const cases = [
    [{ keepAlive: true }, TypeError, /keepAlive must be false or an object/],
    [{ keepAlive: { idleMs: 1500 } }, RangeError, /keepAlive\.idleMs must be a whole number of seconds/],
    [
      { keepAlive: { idleMs: 500 } },
      RangeError,
      /keepAlive\.idleMs must be an integer from 1000 to 32767000/,
    ],
    [{ keepAlive: { intervalMs: 32768000 } }, RangeError, /keepAlive\.intervalMs must be an integer/],
    [{ keepAlive: { count: 0 } }, RangeError, /keepAlive\.count must be an integer from 1 to 127/],
    [{ keepAlive: { count: 128 } }, RangeError, /keepAlive\.count/],
    [{ keepAlive: { idle: 1000 } }, TypeError, /keepAlive\.idle is not a known option/],
    [{ proto: 'udp', keepAlive: false }, TypeError, /keepAlive applies to TCP mappings only/],
  ];
  for (const engine of ENGINES) {
    test(`${engine}: bad keepAlive options are rejected, naming the field`, async (t) => {
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      for (const [extra, Kind, message] of cases) {
        await assert.rejects(proxy.add({ ...base, ...extra }), (error) => {
          assert.ok(error instanceof Kind, `${JSON.stringify(extra)}: ${error}`);
          assert.match(error.message, message);
          return true;
        });
      }
      assert.equal(proxy.stats().mappings.length, 0);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// A peer that vanishes, in namespaces
// ---------------------------------------------------------------------------------------------

const PREFIX = `pst1-${process.pid}`;
const NS = { client: `${PREFIX}-c`, host: `${PREFIX}-h`, target: `${PREFIX}-t` };
const HOST_ADDR = '198.18.0.2';
const TARGET_ADDR = '198.18.1.2';

function ip(...args) {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function deleteNamespaces() {
  for (const ns of Object.values(NS)) {
    try {
      ip('netns', 'del', ns);
    } catch {
      // Not there.
    }
  }
}

/** Why the namespace tests cannot run here, or null. */
function namespaceSkip() {
  if (process.getuid?.() !== 0) return 'needs root, for network namespaces';
  try {
    ip('netns', 'add', NS.host);
    ip('netns', 'del', NS.host);
    return null;
  } catch (error) {
    return `cannot create a network namespace: ${String(error.stderr ?? error.message).trim()}`;
  }
}

function createTopology() {
  for (const ns of Object.values(NS)) ip('netns', 'add', ns);
  ip('link', 'add', `${PREFIX}a`, 'netns', NS.client, 'type', 'veth', 'peer', `${PREFIX}b`, 'netns', NS.host);
  ip('link', 'add', `${PREFIX}c`, 'netns', NS.host, 'type', 'veth', 'peer', `${PREFIX}d`, 'netns', NS.target);
  const up = (ns, dev, addr) => {
    ip('-n', ns, 'addr', 'add', addr, 'dev', dev);
    ip('-n', ns, 'link', 'set', dev, 'up');
  };
  up(NS.client, `${PREFIX}a`, '198.18.0.1/24');
  up(NS.host, `${PREFIX}b`, `${HOST_ADDR}/24`);
  up(NS.host, `${PREFIX}c`, '198.18.1.1/24');
  up(NS.target, `${PREFIX}d`, `${TARGET_ADDR}/24`);
  ip('-n', NS.client, 'route', 'add', 'default', 'via', HOST_ADDR);
  ip('-n', NS.target, 'route', 'add', 'default', 'via', '198.18.1.1');
}

/** Runs a Node module in a namespace; it prints lines the test waits for. */
function nodeIn(ns, script, args = []) {
  return spawnChild(
    'ip',
    ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', script, ...args.map(String)],
    { stdin: true },
  );
}

// Each child exits when its stdin closes, so that a dying test leaves nothing behind.
const EXIT_WITH_STDIN = `process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;

const TARGET = `
import net from 'node:net';
${EXIT_WITH_STDIN}
const server = net.createServer((s) => {
  s.on('data', (d) => s.write(d));
  s.on('error', (e) => console.log('ERROR ' + e.code));
  s.on('close', () => console.log('CLOSED'));
});
server.listen(0, process.argv[1], () => console.log('PORT ' + server.address().port));
`;

const PROXY = `
import { createProxy } from ${JSON.stringify(DIST_URL)};
${EXIT_WITH_STDIN}
const [host, target, targetPort, keepAlive] = process.argv.slice(1);
const proxy = createProxy({ engine: 'splice' });
const m = await proxy.add({ proto: 'tcp', listen: { host, port: 0 }, target: { host: target, port: Number(targetPort) }, keepAlive: JSON.parse(keepAlive) });
console.log('PORT ' + m.listen.port);
setInterval(() => console.log('STATS ' + JSON.stringify(proxy.stats().mappings[0].connections)), 250);
`;

const CLIENT = `
import net from 'node:net';
${EXIT_WITH_STDIN}
const socket = net.connect(Number(process.argv[2]), process.argv[1], () => socket.write('ping'));
socket.once('data', () => console.log('ECHOED'));
socket.on('error', (e) => console.log('ERROR ' + e.code));
socket.on('close', () => console.log('CLOSED'));
`;

describe('a vanished peer is detected', { skip: namespaceSkip() ?? false }, () => {
  const cleanup = () => deleteNamespaces();
  process.on('exit', cleanup);
  after(async () => {
    await killChildren();
    cleanup();
    process.off('exit', cleanup);
  });

  /** Sets up a proxied connection; returns its three processes. */
  async function connection(keepAlive) {
    deleteNamespaces();
    createTopology();
    const target = nodeIn(NS.target, TARGET, [TARGET_ADDR]);
    const targetPort = (await target.waitLine(/^PORT (\d+)/, 10000))[1];
    const proxy = nodeIn(NS.host, PROXY, [HOST_ADDR, TARGET_ADDR, targetPort, JSON.stringify(keepAlive)]);
    const port = (await proxy.waitLine(/^PORT (\d+)/, 10000))[1];
    const client = nodeIn(NS.client, CLIENT, [HOST_ADDR, port]);
    await client.waitLine(/^ECHOED$/, 10000);
    return { target, proxy, client };
  }

  async function vanish(ns, dev, survivor, { within, atLeast }) {
    const start = Date.now();
    ip('-n', ns, 'link', 'set', dev, 'down');
    const m = await survivor.waitLine(/^(ERROR \w+|CLOSED)$/, within);
    const elapsed = Date.now() - start;
    assert.ok(
      elapsed >= atLeast,
      `the reset came after ${elapsed} ms, before keep-alive could have given up`,
    );
    return { line: m[0], elapsed };
  }

  // idle 1 s, then 2 probes 1 s apart: given up about 3 s after the last segment.
  const SHORT = { idleMs: 1000, intervalMs: 1000, count: 2 };

  test('the target vanishes: the client is reset after idle + count × interval', async () => {
    const { target, client, proxy } = await connection(SHORT);
    const { line } = await vanish(NS.target, `${PREFIX}d`, client, { within: 8000, atLeast: 2000 });
    assert.equal(line, 'ERROR ECONNRESET');
    await proxy.waitLine(/"active":0/, 5000);
    for (const child of [target, client, proxy]) child.stdin.end();
  });

  test('the client vanishes: the target is reset (keep-alive inherited by the accepted socket)', async () => {
    const { target, client, proxy } = await connection(SHORT);
    const { line } = await vanish(NS.client, `${PREFIX}a`, target, { within: 8000, atLeast: 2000 });
    assert.equal(line, 'ERROR ECONNRESET');
    for (const child of [target, client, proxy]) child.stdin.end();
  });

  test('keepAlive false: a vanished target holds the connection open', async () => {
    const { target, client, proxy } = await connection(false);
    ip('-n', NS.target, 'link', 'set', `${PREFIX}d`, 'down');
    await assert.rejects(client.waitLine(/^(ERROR \w+|CLOSED)$/, 6000), /a line matching/);
    for (const child of [target, client, proxy]) child.stdin.end();
  });
});
