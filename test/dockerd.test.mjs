// @test-tag slow: about 50 s, real dockerd in namespaces
// End to end with a real dockerd (Debian's docker.io): the drop-in as dockerd's userland proxy,
// containers publishing ports, clients in the daemon's network namespace. Everything runs in a
// namespace, directories and cgroups of its own (test/dockerd-helpers.mjs) and is removed on
// every exit path. PORTSPLICE_DOCKER_PROXY=/usr/sbin/docker-proxy runs the same cases against
// Docker's own proxy (as it does test/docker-proxy.test.mjs), to show that they encode its
// behaviour.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, realpathSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import { dockerProxyPath } from '../dist/index.js';
import { IMAGE, dockerdSkipReason, startDockerd } from './dockerd-helpers.mjs';
import { withTimeout } from './helpers.mjs';

const skip =
  dockerdSkipReason() ??
  (existsSync(dockerProxyPath) ? false : `${dockerProxyPath} is not built (npm run build:native)`);
/** What /proc/PID/exe of the proxies must name (dockerd is given this absolute path). */
const proxyPath = skip ? dockerProxyPath : realpathSync(dockerProxyPath);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** Container port 80 runs busybox's persistent echo server: each connection gets `cat`. */
const ECHO = ['nc', '-ll', '-p', '80', '-e', 'cat'];
const CONTAINER_NET = /^198\.18\.50\.\d+$/;

/** Retries `fn` until it resolves, every 100 ms, for at most `ms`; rethrows the last error. */
async function until(fn, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

describe('a real dockerd with the proxy under test as its userland proxy', { skip }, () => {
  /** @type {import('./dockerd-helpers.mjs').Dockerd} */
  let d;

  before(async () => {
    d = await startDockerd({ proxyPath });
  });

  after(() => d?.cleanup());

  afterEach(async () => {
    const ids = (await d.docker(['ps', '-aq'])).stdout.split('\n').filter(Boolean);
    if (ids.length) await d.docker(['rm', '-f', ...ids]);
  });

  /**
   * The proxies for host port `port`, as sorted 'proto host-ip' strings, after checking that
   * each one is the binary under test, a child of the running dockerd, forwarding to the
   * container's address and to the container port for its protocol (`containerPorts`).
   */
  function proxiesFor(port, containerPorts = { tcp: 80, udp: 7 }) {
    const list = d.proxies().filter((p) => p.hostPort === port);
    for (const p of list) {
      assert.equal(p.exe, proxyPath, `proxy ${p.pid} (${p.argv.join(' ')}) is the binary under test`);
      assert.equal(p.ppid, d.pid, `proxy ${p.pid} is a child of dockerd ${d.pid}`);
      assert.match(p.containerIp, CONTAINER_NET);
      assert.equal(p.containerPort, containerPorts[p.proto]);
    }
    return list.map((p) => `${p.proto} ${p.hostIp}`).sort();
  }

  /** Listening TCP or bound UDP sockets on `port` in the namespace. */
  const listenersOn = (port) => d.listeners().filter((l) => l.endsWith(`:${port}`));

  /** A byte-exact TCP echo of `size` random bytes through host:port, FIN included. */
  async function tcpEcho(host, port, size = 1024 * 1024) {
    const payload = randomBytes(size);
    const r = await d.client({ mode: 'tcp', host, port }, payload);
    assert.equal(r.code, 0, `tcp client via ${host}:${port}: ${r.stderr}`);
    assert.equal(r.stdout.length, payload.length, `bytes echoed via ${host}:${port}`);
    assert.ok(r.stdout.equals(payload), `the echo via ${host}:${port} is byte-exact`);
  }

  /** The first echo through a new container, retried while its server is not listening yet. */
  const firstEcho = (host, port) => until(() => tcpEcho(host, port, 64 * 1024));

  test('dockerd runs the proxy under test: /proc/PID/exe of every proxy it starts', async () => {
    await d.run(['-p', '127.0.0.1:18079:80', IMAGE, ...ECHO]);
    const proxies = d.proxies();
    assert.equal(proxies.length, 1, JSON.stringify(proxies.map((p) => p.argv)));
    assert.equal(proxies[0].exe, proxyPath);
    assert.equal(proxies[0].ppid, d.pid);
    // dockerd 20.10's command line: no -use-listen-fd (that came with Docker 28).
    assert.deepEqual(proxies[0].argv.slice(1, 9), [
      '-proto',
      'tcp',
      '-host-ip',
      '127.0.0.1',
      '-host-port',
      '18079',
      '-container-ip',
      proxies[0].containerIp,
    ]);
  });

  /** GET /blob.bin from the container's httpd via 127.0.0.1:port; the body must be the file. */
  async function fetchBlob(port) {
    const response = await until(async () => {
      const r = await d.client({ mode: 'tcp', host: '127.0.0.1', port }, 'GET /blob.bin HTTP/1.0\r\n\r\n');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout.toString('latin1'), /^HTTP\/1\.[01] 200 /);
      return r.stdout;
    });
    const split = response.indexOf('\r\n\r\n');
    assert.match(
      response.subarray(0, split + 2).toString('latin1'),
      new RegExp(`Content-Length: ${d.blob.length}\r\n`),
    );
    assert.ok(
      response.subarray(split + 4).equals(d.blob),
      'the body is the file in the image, byte for byte',
    );
  }

  test('-p 127.0.0.1:P:80: busybox httpd fetched over 127.0.0.1, byte-exact', async () => {
    await d.run(['-p', '127.0.0.1:18080:80', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www']);
    assert.deepEqual(proxiesFor(18080), ['tcp 127.0.0.1']);
    assert.deepEqual(listenersOn(18080), ['tcp 127.0.0.1:18080']);
    // 127.0.0.1 is never DNATed (Docker's rules skip 127.0.0.0/8): these bytes went through the proxy.
    await fetchBlob(18080);
  });

  test('-p P:80 and P:7/udp: TCP over 127.0.0.1 and [::1] to an IPv4 container, UDP echo over both', async () => {
    const id = await d.run(['-p', '18081:80', '-p', '18081:7/udp', IMAGE, ...ECHO]);
    // dockerd 20.10 starts a second proxy on [::] for each port when the host has IPv6.
    assert.deepEqual(proxiesFor(18081), ['tcp 0.0.0.0', 'tcp ::', 'udp 0.0.0.0', 'udp ::']);
    await firstEcho('127.0.0.1', 18081);
    await tcpEcho('127.0.0.1', 18081);
    await tcpEcho('::1', 18081);

    await d.udpEchoIn(id, 7);
    for (const host of ['127.0.0.1', '::1']) {
      const payload = randomBytes(3 * 1400);
      const r = await d.client({ mode: 'udp', host, port: 18081, size: 1400 }, payload);
      assert.equal(r.code, 0, `udp via ${host}: ${r.stderr}`);
      assert.ok(r.stdout.equals(payload), `three datagrams echoed byte-exact via ${host}`);
    }
  });

  test('publishing a port in use fails with the address and the reason; no proxy is left', async (t) => {
    const holder = await d.clientProcess({ mode: 'listen', host: '127.0.0.1', port: 18082 });
    try {
      const r = await d.docker(['run', '-d', '-p', '127.0.0.1:18082:80', IMAGE, ...ECHO], {
        allowFail: true,
      });
      assert.equal(r.code, 125, r.stderr);
      t.diagnostic(r.stderr.trim());
      // docker-proxy 20.10: "Error starting userland proxy: listen tcp4 127.0.0.1:18082: bind: address already in use"
      assert.match(r.stderr, /userland proxy: .*127\.0\.0\.1:18082\b.*address already in use/);
      assert.deepEqual(proxiesFor(18082), []);
      assert.deepEqual(listenersOn(18082), ['tcp 127.0.0.1:18082'], 'only the holder listens');
      assert.equal((await d.docker(['ps', '-q'])).stdout, '', 'the container is not running');
    } finally {
      holder.stdin.end();
    }
    // The other refusal is dockerd's own port allocator, before any proxy runs.
    await d.run(['-p', '127.0.0.1:18083:80', IMAGE, ...ECHO]);
    const r = await d.docker(['run', '-d', '-p', '127.0.0.1:18083:80', IMAGE, ...ECHO], { allowFail: true });
    assert.equal(r.code, 125);
    assert.match(r.stderr, /Bind for 127\.0\.0\.1:18083 failed: port is already allocated/);
    assert.deepEqual(proxiesFor(18083), ['tcp 127.0.0.1']);
  });

  test('re-publishing a port right after removing a container that had a connection open', async (t) => {
    // moby's TestRestartUserlandProxyUnder2MSL: a fetch from httpd (the server closes first, so
    // the proxy's socket on the host port is the active closer) leaves 127.0.0.1:P in
    // TIME_WAIT, and a connection is open when the container is removed; the new proxy must
    // bind the port anyway (SO_REUSEADDR), at once.
    const httpd = ['-p', '127.0.0.1:18084:80', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www'];
    await d.run(httpd);
    await fetchBlob(18084);
    const held = await d.clientProcess({ mode: 'hold', host: '127.0.0.1', port: 18084 });
    const ended = new Promise((resolve) => held.once('exit', resolve));
    await d.docker(['rm', '-f', (await d.docker(['ps', '-q'])).stdout.trim()]);
    await withTimeout(ended, 10000, 'the held connection to end');
    t.diagnostic(`the open connection, on docker rm -f: ${held.output().split('\n')[1]}`);
    assert.match(held.output(), /^ready\nended: /);
    assert.deepEqual(proxiesFor(18084), []);
    assert.notDeepEqual(d.timeWait(18084), [], "the host port is in TIME_WAIT, as in moby's test");
    await d.run(httpd);
    assert.deepEqual(proxiesFor(18084), ['tcp 127.0.0.1']);
    await fetchBlob(18084);
  });

  test('docker stop and docker rm -f leave no proxy process and no listener', async () => {
    await d.run(['--name', 'psd-stop', '-p', '18085:80', '-p', '18085:7/udp', IMAGE, ...ECHO]);
    const started = () => d.proxies().filter((p) => p.hostPort === 18085);
    assert.deepEqual(proxiesFor(18085), ['tcp 0.0.0.0', 'tcp ::', 'udp 0.0.0.0', 'udp ::']);
    assert.equal(listenersOn(18085).length, 4, d.listeners().join('\n'));
    const first = started().map((p) => p.pid);

    await d.docker(['stop', '-t', '1', 'psd-stop']);
    assert.deepEqual(started(), [], 'no proxy after docker stop');
    assert.deepEqual(listenersOn(18085), [], 'no listener after docker stop');

    await d.docker(['start', 'psd-stop']);
    assert.deepEqual(proxiesFor(18085), ['tcp 0.0.0.0', 'tcp ::', 'udp 0.0.0.0', 'udp ::']);
    assert.ok(
      started().every((p) => !first.includes(p.pid)),
      'new proxies',
    );
    await firstEcho('::1', 18085);

    await d.docker(['rm', '-f', 'psd-stop']);
    assert.deepEqual(started(), [], 'no proxy after docker rm -f');
    assert.deepEqual(listenersOn(18085), [], 'no listener after docker rm -f');
  });

  test('a dockerd restart, clean or killed, leaves no stale proxy', async () => {
    await d.run(['--restart', 'always', '--stop-timeout', '1', '-p', '127.0.0.1:18086:80', IMAGE, ...ECHO]);
    for (const signal of ['SIGTERM', 'SIGKILL']) {
      const before = d.proxies().map((p) => p.pid);
      assert.equal(before.length, 1, `one proxy before the ${signal} restart`);
      await d.stopDaemon(signal);
      // A clean stop stops the proxies; a killed dockerd's proxies get SIGTERM from the kernel
      // (dockerd starts them with Pdeathsig).
      await until(() => assert.deepEqual(d.proxies(), [], `no proxy once dockerd died of ${signal}`), 5000);
      await d.startDaemon();
      // The container comes back (restart policy) with exactly one new proxy for its port.
      await until(() => assert.deepEqual(proxiesFor(18086), ['tcp 127.0.0.1']), 15000);
      assert.ok(!before.includes(d.proxies()[0].pid), 'a new proxy');
      await firstEcho('127.0.0.1', 18086);
      assert.deepEqual(listenersOn(18086), ['tcp 127.0.0.1:18086']);
    }
  });
});
