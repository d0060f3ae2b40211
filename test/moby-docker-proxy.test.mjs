// @test-tag slow: about 15 s
// moby's own unit tests of docker-proxy, ported as black-box tests of the binary: the same
// cases run against portsplice-docker-proxy (or PORTSPLICE_DOCKER_PROXY) and against the
// installed docker-proxy (/usr/sbin/docker-proxy, Debian's docker.io 20.10), so that the file
// is shown to encode docker-proxy's real behaviour.
//
// Sources, in github.com/moby/moby at b985e2313a8676e18072b442911fc8f64f17d440 (2025):
// - cmd/docker-proxy/network_proxy_linux_test.go (last changed in b5bf89c315): TestTCP4Proxy
//   (a passed listener), TestTCP4ProxyNoListener (the proxy binds), TestTCP4ProxyHalfClose,
//   TestTCP6Proxy, TestTCPDualStackProxy, TestUDP4Proxy, TestUDP4ProxyNoListener,
//   TestUDP6Proxy, TestUDPWriteError. Their echo servers and their 72-byte payload are kept:
//   the client writes, optionally half-closes, and reads the echo. (The SCTP cases are left out:
//   the drop-in does not forward SCTP, docker-proxy.test.mjs checks its error.)
// - cmd/docker-proxy/udp_proxy_linux_test.go: TestUDPOneSided (4276f330fc, Docker 28.0.2).
// - Before ba2f3c0a98 (2024, "pass open listener to proxy impl") the same cases bound the port
//   themselves (cmd/docker-proxy/network_proxy_test.go at e7cf711c02, the 20.10 era), and the
//   dual-stack case was skipped ("No support for dual stack yet"). A docker-proxy without
//   -use-listen-fd runs each case that way, as its own tests did.
//
// A passed listener is made as Go's net.ListenTCP/ListenUDP and (*TCPListener).File() make it
// (blocking, SO_REUSEADDR on TCP, IPV6_V6ONLY=1 for tcp6/udp6, 0 for "tcp" on [::]), by the
// python3 dockerd stand-in of docker-proxy-helpers.mjs.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';

import { dockerProxyPath } from '../dist/index.js';
import {
  V4,
  V6,
  sleep,
  withTimeout,
  startServer,
  connect,
  collect,
  pingEcho,
  closeServers,
} from './helpers.mjs';
import { reserveUdpPort } from './udp-helpers.mjs';
import {
  HAVE_PYTHON,
  killAll,
  exitOf,
  stop,
  proxyArgs,
  startForwarder,
  startUdpEcho,
  launchLikeDockerd,
} from './docker-proxy-helpers.mjs';

after(killAll);

const testBuf = Buffer.from('Buffalo1 buffalo2 Buffalo3 buffalo4 buffalo5 buffalo6 Buffalo7 buffalo8');
// moby: client.SetDeadline(time.Now().Add(10 * time.Second)).
const DEADLINE = 10000;

const INSTALLED = '/usr/sbin/docker-proxy';

/** What a docker-proxy binary can do, from its usage text (docker-proxy 20.10 has no -version). */
function featuresOf(path) {
  const usage = spawnSync(path, ['-h'], { encoding: 'utf8', timeout: 5000 });
  return { listenFd: /-use-listen-fd/.test(`${usage.stdout}${usage.stderr}`) };
}

const PROXIES = [
  {
    name: `portsplice-docker-proxy (${dockerProxyPath})`,
    path: dockerProxyPath,
    listenFd: true,
    // The flow timeout can be shortened from outside, as moby's test shortens connTrackTimeout.
    udpTimeoutEnv: 'PORTSPLICE_UDP_TIMEOUT_MS',
  },
  {
    name: `docker-proxy (${INSTALLED})`,
    path: INSTALLED,
    installed: existsSync(INSTALLED),
    ...(existsSync(INSTALLED) ? featuresOf(INSTALLED) : {}),
  },
];

/** moby's StreamEchoServer: io.Copy back and close, or with TCPHalfClose read to EOF, write, CloseWrite. */
function startTcpEcho(host, { halfClose = false } = {}) {
  return startServer(
    (socket) => {
      if (!halfClose) {
        socket.pipe(socket);
        return;
      }
      const chunks = [];
      socket.on('data', (chunk) => chunks.push(chunk));
      socket.on('end', () => socket.end(Buffer.concat(chunks)));
    },
    { host },
  );
}

/**
 * Start `proxy` forwarding to containerIp:containerPort: with `passed`, on a listener made
 * here and passed as fd 4 (-use-listen-fd), else bound by the proxy on a free port of `host`.
 * Resolves the run with `port`.
 */
async function startProxy(proxy, { proto, host, passed, v6only, containerIp, containerPort, env }) {
  if (!passed)
    return startForwarder({ command: proxy.path, proto, hostIp: host, containerIp, containerPort, env });
  const socket = { proto, host, reuseaddr: proto === 'tcp', v6only };
  const args = proxyArgs({ proto, hostIp: host, hostPort: '@PORT@', containerIp, containerPort });
  const run = await launchLikeDockerd(proxy.path, { socket, args, env });
  if (run.report.status !== '0\n') {
    await stop(run);
    throw new Error(`proxy did not start: status ${JSON.stringify(run.report.status)}`);
  }
  return run;
}

/** moby's testProxyAt for TCP: write testBuf, optionally CloseWrite, read the echo. */
async function tcpProxyAt(port, host, halfClose) {
  const client = await connect(port, host, { timeout: DEADLINE });
  try {
    if (!halfClose) {
      const echoed = await pingEcho(client, testBuf, DEADLINE);
      assert.deepEqual(echoed, testBuf);
      return;
    }
    const received = withTimeout(collect(client, { keep: true }), DEADLINE, 'the echo after half-close');
    client.end(testBuf);
    assert.deepEqual((await received).data, testBuf);
  } finally {
    client.destroy();
  }
}

/** A UDP socket connected to host:port (moby: net.Dial("udp", ...)), queueing what it receives. */
async function dialUdp(port, host) {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const inbox = [];
  let wake = () => {};
  socket.on('message', (msg, rinfo) => {
    inbox.push({ msg, rinfo });
    wake();
  });
  socket.on('error', () => {}); // An ICMP error on a connected socket is not the test's concern.
  await new Promise((resolve) => socket.connect(port, host, resolve));
  return {
    send: (payload) =>
      new Promise((resolve, reject) => socket.send(payload, (e) => (e ? reject(e) : resolve()))),
    /** The next datagram, bounded. */
    recv(timeout = DEADLINE, what = `a datagram from ${host}:${port}`) {
      if (inbox.length) return Promise.resolve(inbox.shift());
      return withTimeout(
        new Promise((resolve) => {
          wake = () => {
            wake = () => {};
            resolve(inbox.shift());
          };
        }),
        timeout,
        what,
        () => (wake = () => {}),
      );
    },
    close: () => new Promise((resolve) => socket.close(resolve)),
  };
}

/** moby's testProxyAt for UDP: write testBuf, read the echo. */
async function udpProxyAt(port, host) {
  const client = await dialUdp(port, host);
  try {
    await client.send(testBuf);
    const { msg } = await client.recv();
    assert.deepEqual(msg, testBuf);
  } finally {
    await client.close();
  }
}

for (const proxy of PROXIES) {
  describe(
    proxy.name,
    { skip: proxy.installed === false ? `${INSTALLED} is not installed (Debian: docker.io)` : false },
    () => {
      /** Skip reason for a case that needs a passed listener, or false. */
      const needsListenFd = () => {
        if (!proxy.listenFd)
          return 'this docker-proxy predates -use-listen-fd (Docker 28); its own tests of that era bound the port themselves';
        return HAVE_PYTHON ? false : 'needs python3 to make the passed listener';
      };
      /** A passed listener where the binary takes one (moby today), else the proxy binds (moby at e7cf711c02). */
      const passedIfSupported = () => Boolean(proxy.listenFd) && HAVE_PYTHON;

      async function tcp4Case({ passed, halfClose }) {
        const backend = await startTcpEcho(V4, { halfClose });
        let run;
        try {
          run = await startProxy(proxy, {
            proto: 'tcp',
            host: V4,
            passed,
            containerIp: V4,
            containerPort: backend.port,
          });
          await tcpProxyAt(run.port, V4, halfClose);
        } finally {
          await stop(run);
          await closeServers(backend);
        }
      }

      test('TestTCP4Proxy: a passed tcp4 listener', { skip: needsListenFd() }, () =>
        tcp4Case({ passed: true, halfClose: false }),
      );

      test('TestTCP4ProxyNoListener: the proxy binds host-ip:host-port', () =>
        tcp4Case({ passed: false, halfClose: false }));

      test("TestTCP4ProxyHalfClose: the backend answers only after the client's FIN", () =>
        tcp4Case({ passed: passedIfSupported(), halfClose: true }));

      test('TestTCP6Proxy: [::1] to [::1]', async (t) => {
        const backend = await startTcpEcho(V6);
        let run;
        t.after(() => stop(run));
        t.after(() => closeServers(backend));
        run = await startProxy(proxy, {
          proto: 'tcp',
          host: V6,
          passed: passedIfSupported(),
          v6only: 1, // Go's "tcp6"
          containerIp: V6,
          containerPort: backend.port,
        });
        await tcpProxyAt(run.port, V6, false);
      });

      test(
        'TestTCPDualStackProxy: a [::] listener with IPV6_V6ONLY=0, reached over 127.0.0.1',
        { skip: needsListenFd() && `${needsListenFd()} (and skipped it: "No support for dual stack yet")` },
        async (t) => {
          const backend = await startTcpEcho(V6);
          let run;
          t.after(() => stop(run));
          t.after(() => closeServers(backend));
          run = await startProxy(proxy, {
            proto: 'tcp',
            host: '::',
            passed: true,
            v6only: 0, // Go's "tcp" on [::]
            containerIp: V6,
            containerPort: backend.port,
          });
          await tcpProxyAt(run.port, V4, false);
        },
      );

      async function udpCase({ host, passed }) {
        const backend = await startUdpEcho(host);
        let run;
        try {
          run = await startProxy(proxy, {
            proto: 'udp',
            host,
            passed,
            v6only: host === V6 ? 1 : undefined, // Go's "udp6"
            containerIp: host,
            containerPort: backend.port,
          });
          await udpProxyAt(run.port, host);
        } finally {
          await stop(run);
          await backend.close();
        }
      }

      test('TestUDP4Proxy: a passed udp4 socket', { skip: needsListenFd() }, () =>
        udpCase({ host: V4, passed: true }),
      );

      test('TestUDP4ProxyNoListener: the proxy binds', () => udpCase({ host: V4, passed: false }));

      test('TestUDP6Proxy: [::1] to [::1]', () => udpCase({ host: V6, passed: passedIfSupported() }));

      test('TestUDPWriteError: two datagrams while the backend is absent, then it appears and the third is echoed', async (t) => {
        // moby: the backend at a "hopefully free" port; here one just bound and released.
        const backendPort = await reserveUdpPort(V4);
        let run;
        let client;
        let backend;
        t.after(async () => {
          await client?.close();
          if (backend) await new Promise((resolve) => backend.close(resolve));
          await stop(run);
        });
        run = await startProxy(proxy, {
          proto: 'udp',
          host: V4,
          passed: passedIfSupported(),
          containerIp: V4,
          containerPort: backendPort,
        });
        client = await dialUdp(run.port, V4);
        // "Make sure the proxy doesn't stop when there is no actual backend".
        await client.send(testBuf);
        await client.send(testBuf);
        backend = dgram.createSocket('udp4');
        backend.on('message', (msg, rinfo) => backend.send(msg, rinfo.port, rinfo.address));
        await new Promise((resolve, reject) => {
          backend.once('error', reject);
          backend.bind(backendPort, V4, resolve);
        });
        await client.send(testBuf);
        const { msg } = await client.recv();
        assert.deepEqual(msg, testBuf);
        // Not asserted, as moby does not: that the first two are never echoed. docker-proxy
        // may read them only after the backend is bound (20.10 here echoed them late).
      });

      test(
        'TestUDPOneSided: a client that only sends keeps one flow (one source port); idle, it expires',
        {
          skip: proxy.udpTimeoutEnv
            ? false
            : "docker-proxy's 90 s flow timeout cannot be shortened from outside (moby sets connTrackTimeout " +
              'inside its unit test), and one-sided flows keep their port only since Docker 28.0.2 (4276f330fc)',
        },
        async () => {
          const connTrackTimeout = 1000;
          const backend = dgram.createSocket('udp4');
          const msgs = [];
          let wake = () => {};
          backend.on('message', (data, saddr) => {
            msgs.push({ data: data.toString(), port: saddr.port });
            wake();
          });
          await new Promise((resolve) => backend.bind(0, V4, resolve));
          const next = () =>
            msgs.length
              ? Promise.resolve(msgs.shift())
              : withTimeout(
                  new Promise((resolve) => {
                    wake = () => {
                      wake = () => {};
                      resolve(msgs.shift());
                    };
                  }),
                  DEADLINE,
                  'a datagram at the backend',
                );
          let run;
          let client;
          try {
            run = await startProxy(proxy, {
              proto: 'udp',
              host: V4,
              passed: false,
              containerIp: V4,
              containerPort: backend.address().port,
              env: { [proxy.udpTimeoutEnv]: String(connTrackTimeout) },
            });
            client = await dialUdp(run.port, V4);
            let expPort;
            for (let i = 0; i < 15; i++) {
              await client.send(Buffer.from('hello'));
              await sleep(100);
              const msg = await next();
              assert.equal(msg.data, 'hello');
              if (i === 0) expPort = msg.port;
              else assert.equal(msg.port, expPort, `datagram ${i} came from another source port: a new flow`);
            }
            // moby: "wait for at least twice the conntrack timeout to make sure the entry is GC'd".
            await sleep(2 * connTrackTimeout);
            await client.send(Buffer.from('hello'));
            const msg = await next();
            assert.equal(msg.data, 'hello');
            assert.notEqual(msg.port, expPort, 'after the timeout the flow is new');
          } finally {
            await client?.close();
            await new Promise((resolve) => backend.close(resolve));
            await stop(run);
          }
        },
      );

      test('SIGINT stops it with exit 0 (dockerd stops proxies so)', async (t) => {
        const backend = await startTcpEcho(V4);
        let run;
        t.after(() => stop(run));
        t.after(() => closeServers(backend));
        run = await startProxy(proxy, {
          proto: 'tcp',
          host: V4,
          passed: false,
          containerIp: V4,
          containerPort: backend.port,
        });
        await tcpProxyAt(run.port, V4, false);
        run.child.kill('SIGINT');
        assert.deepEqual(await exitOf(run), { code: 0, signal: null });
      });
    },
  );
}
