// @test-tag slow: about 30 s
// portsplice-docker-proxy, the drop-in replacement for Docker's docker-proxy: its flags, the
// readiness protocol on fd 3, forwarding, stopping on signals, and the socket passed as fd 4
// made exactly as dockerd 28 and 29 make it (blocking, SO_REUSEADDR, IPV6_V6ONLY, IP_PKTINFO,
// listen(fd, -1), Docker 29's drop-all filter detached by dockerd or left on, dual-stack),
// started by a python3 stand-in for dockerd that reads the status with one 2-byte read(),
// gives fds 0-2 as /dev/null and a soft RLIMIT_NOFILE of 1024, and checks the shared socket
// afterwards. moby's own test cases are in moby-docker-proxy.test.mjs.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import dgram from 'node:dgram';

import { dockerProxyPath } from '../dist/index.js';
import {
  V4,
  V6,
  MiB,
  sha256,
  randomPayload,
  startEchoServer,
  freePort,
  connect,
  exchange,
  expectRefused,
  pingEcho,
  closeServers,
} from './helpers.mjs';
import {
  HAVE_PYTHON,
  killAll,
  launch as launchAny,
  exitOf,
  stop,
  proxyArgs,
  startForwarder as startAny,
  startUdpEcho,
  udpRoundTrip,
  launchLikeDockerd,
} from './docker-proxy-helpers.mjs';

const VERSION = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;

after(killAll);

/** launch() of the drop-in. */
const launch = (args, opts) => launchAny(args, { command: dockerProxyPath, ...opts });
/** startForwarder() of the drop-in. */
const startForwarder = (opts) => startAny({ command: dockerProxyPath, ...opts });

describe('portsplice-docker-proxy: flags', () => {
  test('the executable is built', () => {
    assert.ok(existsSync(dockerProxyPath), `${dockerProxyPath} exists (npm run build:native builds it)`);
  });

  test('-v and --version print the version and exit 0', async () => {
    for (const flag of ['-v', '--version', '-version=true']) {
      const run = launch([flag]);
      assert.deepEqual(await exitOf(run), { code: 0, signal: null }, flag);
      assert.match(run.stdout, new RegExp(`version ${VERSION.replaceAll('.', '\\.')}\\n$`), flag);
    }
  });

  test('-h prints the usage and exits 0, as Go does', async () => {
    const run = launch(['-h']);
    assert.deepEqual(await exitOf(run), { code: 0, signal: null });
    assert.match(run.stderr, /^Usage of .*:\n[^]*-container-port int\n[^]*-use-listen-fd\n/);
  });

  test('flag errors exit 2 with the error and the usage on stderr, as Go does', async () => {
    const cases = [
      [['-foo'], 'flag provided but not defined: -foo'],
      [['--foo=1'], 'flag provided but not defined: -foo'],
      [['-host-port', 'abc'], 'invalid value "abc" for flag -host-port: parse error'],
      [['-container-port=99999999999999999999'], 'for flag -container-port: value out of range'],
      [['-use-listen-fd=maybe'], 'invalid boolean value "maybe" for -use-listen-fd: parse error'],
      [['-host-ip', '127.0.0.1', '-proto'], 'flag needs an argument: -proto'],
      [['---proto=tcp'], 'bad flag syntax: ---proto=tcp'],
    ];
    for (const [args, message] of cases) {
      const run = launch(args);
      assert.deepEqual(await exitOf(run), { code: 2, signal: null }, args.join(' '));
      const error = run.stderr.split('\n')[0];
      assert.ok(error.includes(message), `${args.join(' ')}: stderr ${JSON.stringify(run.stderr)}`);
      assert.match(run.stderr, /\nUsage of /);
      // dockerd sees the error too, instead of a bare end of file.
      assert.equal(await run.status(), `1\n${error}`);
    }
  });

  test('bad addresses, ports and protocols fail through fd 3 with exit 1', async () => {
    const good = { hostPort: 1, containerPort: 1 };
    const cases = [
      [
        { ...good, hostIp: '300.1.1.1' },
        /^1\ninvalid value "300\.1\.1\.1" for flag -host-ip: invalid IP address/,
      ],
      [{ ...good, containerIp: 'localhost' }, /^1\n.*-container-ip: invalid IP address: localhost$/],
      [{ ...good, containerPort: -1 }, /^1\ninvalid container port -1/],
      [{ ...good, hostPort: 65536 }, /^1\ninvalid host port 65536/],
      [{ ...good, proto: 'icmp' }, /^1\nunsupported protocol icmp$/],
    ];
    for (const [options, expected] of cases) {
      const run = launch(proxyArgs(options));
      const status = await run.status();
      assert.match(status, expected, JSON.stringify(options));
      assert.ok(!status.endsWith('\n'), 'no trailing newline after the error text');
      assert.deepEqual(await exitOf(run), { code: 1, signal: null });
    }
  });

  test('a bad PORTSPLICE_UDP_TIMEOUT_MS fails through fd 3 naming the variable, exit 1', async () => {
    for (const value of ['', 'abc', '0', '-5', '1.5', '2147483648']) {
      const run = launch(proxyArgs({ proto: 'udp', hostPort: 1, containerPort: 1 }), {
        env: { PORTSPLICE_UDP_TIMEOUT_MS: value },
      });
      assert.equal(
        await run.status(),
        `1\nPORTSPLICE_UDP_TIMEOUT_MS="${value}": it must be a whole number of milliseconds from 1 to 2147483647`,
      );
      assert.deepEqual(await exitOf(run), { code: 1, signal: null });
    }
  });

  test('-use-listen-fd without fd 4 fails through fd 3', async () => {
    const run = launch([...proxyArgs({ hostPort: 1, containerPort: 1 }), '-use-listen-fd']);
    assert.match(await run.status(), /^1\n-use-listen-fd was given, but fd 4 is not open$/);
    assert.deepEqual(await exitOf(run), { code: 1, signal: null });
  });

  test('sctp fails with a clear message', async () => {
    const run = launch(proxyArgs({ proto: 'sctp', hostPort: await freePort(), containerPort: 1 }));
    assert.match(await run.status(), /^1\nsctp .*(not supported by this kernel|not implemented)/);
    assert.deepEqual(await exitOf(run), { code: 1, signal: null });
  });
});

describe('portsplice-docker-proxy: forwarding', () => {
  let echo;
  let udpEcho;

  after(async () => {
    await closeServers(echo, udpEcho);
  });

  test('TCP: "0\\n" on fd 3, then 1 MiB byte-exact both ways, with every Go flag syntax', async (t) => {
    echo ??= await startEchoServer();
    let run;
    t.after(() => stop(run));
    const hostPort = await freePort();
    // -f v, -f=v, --f v, --f=v, and a boolean with an explicit value.
    run = launch([
      '--proto=tcp',
      '-host-ip=127.0.0.1',
      '--host-port',
      String(hostPort),
      '-container-ip',
      V4,
      '-container-port=' + echo.port,
      '-use-listen-fd=false',
    ]);
    assert.equal(await run.status(), '0\n');
    const payload = randomPayload(MiB);
    const received = await exchange(hostPort, V4, payload, { timeout: 10000 });
    assert.equal(received.bytes, payload.length);
    assert.equal(received.sha256, sha256(payload));
    assert.equal(run.stdout + run.stderr, '', 'nothing is printed on success');
  });

  test('TCP: a port in use fails with "1\\n" and the bind error, exit 1', async (t) => {
    echo ??= await startEchoServer();
    let first;
    t.after(() => stop(first));
    first = await startForwarder({ containerPort: echo.port });
    const second = launch(proxyArgs({ hostPort: first.port, containerPort: echo.port }));
    const status = await second.status();
    assert.match(status, /^1\n/);
    assert.match(status, /address already in use|EADDRINUSE/i);
    assert.deepEqual(await exitOf(second), { code: 1, signal: null });
  });

  test('TCP: IPv6 host address (::1) to an IPv4 container address', async (t) => {
    echo ??= await startEchoServer();
    let run;
    t.after(() => stop(run));
    run = await startForwarder({ hostIp: V6, containerPort: echo.port });
    const payload = randomPayload(64 * 1024);
    const received = await exchange(run.port, V6, payload);
    assert.equal(received.sha256, sha256(payload));
  });

  test('UDP: datagrams are echoed back from the proxy port', async (t) => {
    udpEcho ??= await startUdpEcho();
    const client = dgram.createSocket('udp4');
    let run;
    t.after(async () => {
      client.close();
      await stop(run);
    });
    run = await startForwarder({ proto: 'udp', containerPort: udpEcho.port });
    await new Promise((resolve) => client.bind(0, V4, resolve));
    for (const size of [1, 1400, 9000]) {
      const payload = randomPayload(size);
      const { msg, rinfo } = await udpRoundTrip(client, run.port, payload);
      assert.ok(msg.equals(payload), `${size}-byte datagram echoed intact`);
      assert.equal(rinfo.port, run.port, 'the reply comes from the proxy port');
      assert.equal(rinfo.address, V4);
    }
  });

  test('without fd 3 (run by hand) it still serves', async (t) => {
    echo ??= await startEchoServer();
    const hostPort = await freePort();
    const run = launch(proxyArgs({ hostPort, containerPort: echo.port }), { fd3: false });
    t.after(() => stop(run));
    let socket;
    for (let i = 0; i < 100 && !socket; i++) {
      socket = await connect(hostPort, V4, { timeout: 1000 }).catch(() => undefined);
      if (!socket) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.ok(socket, 'the port accepts connections');
    await pingEcho(socket);
    socket.destroy();
  });
});

describe('portsplice-docker-proxy: stopping', () => {
  let echo;

  after(async () => {
    await closeServers(echo);
  });

  for (const signal of ['SIGINT', 'SIGTERM']) {
    test(`${signal}: exits 0 within 1 s with a connection open; the port is then refused`, async (t) => {
      echo ??= await startEchoServer();
      let run;
      let socket;
      t.after(() => socket?.destroy());
      t.after(() => stop(run));
      run = await startForwarder({ containerPort: echo.port });
      socket = await connect(run.port, V4);
      await pingEcho(socket);
      const start = Date.now();
      run.child.kill(signal);
      assert.deepEqual(await exitOf(run, 1000), { code: 0, signal: null });
      assert.ok(Date.now() - start < 1000, `exited in ${Date.now() - start} ms`);
      await expectRefused(run.port, V4);
    });
  }
});

/** Flags of an fd in /proc/PID/fdinfo (octal there). */
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** The soft and hard "Max open files" of a process. */
function fileLimits(pid) {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const [soft, hard] = line.split(/\s{2,}/).slice(1, 3);
  return { soft, hard };
}

/** The hard RLIMIT_NOFILE of this process, from /proc (node has no getrlimit). */
const HARD_NOFILE = fileLimits(process.pid).hard;

/** The socket dockerd 28 makes (drivers/bridge/port_mapping_linux.go): SO_REUSEADDR on TCP and UDP. */
const docker28 = (proto, host) => ({
  proto,
  host,
  reuseaddr: true,
  pktinfo: proto === 'udp',
  v6only: host.includes(':') ? 1 : undefined,
});
/** The socket dockerd 29 makes (portallocator/osallocator_linux.go): SO_REUSEADDR on TCP only, the drop-all filter attached before bind and detached by dockerd before the proxy starts. */
const docker29 = (proto, host) => ({
  proto,
  host,
  reuseaddr: proto === 'tcp',
  pktinfo: proto === 'udp',
  v6only: host.includes(':') ? 1 : undefined,
  filter: 'detach',
});

/** The drop-in's flags for a socket on fd 4; -host-port is only a label there. */
function listenFdArgs(socket, containerIp, containerPort) {
  const hostIp = socket.host;
  return proxyArgs({ proto: socket.proto, hostIp, hostPort: 1, containerIp, containerPort });
}

/** Check what the proxy did to the socket it shares with its parent, and that it reported ready. */
function assertAdopted(run, socket) {
  const { report } = run;
  assert.equal(report.status, '0\n', `dockerd's one 2-byte read() got "0\\n"; stderr ${run.stderr}`);
  assert.equal(report.nonblocking, true, 'the proxy made the (shared) socket non-blocking');
  assert.equal(report.filterLength, 0, 'no socket filter is left on the socket');
  if (socket.v6only !== undefined) assert.equal(report.v6only, socket.v6only, 'IPV6_V6ONLY is unchanged');
  assert.ok(report.fdFlags !== null, 'the proxy still holds fd 4');
  assert.equal(
    report.fdFlags & O_NONBLOCK,
    O_NONBLOCK,
    `fd 4 flags ${report.fdFlags.toString(8)}: O_NONBLOCK`,
  );
  assert.equal(report.fdFlags & O_CLOEXEC, O_CLOEXEC, `fd 4 flags ${report.fdFlags.toString(8)}: O_CLOEXEC`);
}

/** 256 KiB byte-exact both ways through a TCP proxy at host:port, twice (a blocking listener would hang the second accept). */
async function assertTcpForwards(port, host) {
  for (let i = 0; i < 2; i++) {
    const payload = randomPayload(256 * 1024);
    const received = await exchange(port, host, payload);
    assert.equal(received.bytes, payload.length, `connection ${i} via ${host}`);
    assert.equal(received.sha256, sha256(payload), `connection ${i} via ${host}`);
  }
}

/** Datagrams of 1, 1400 and 9000 bytes echoed intact through a UDP proxy, from the proxy's address and port. */
async function assertUdpForwards(port, host) {
  const client = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  try {
    await new Promise((resolve) => client.bind(0, host, resolve));
    for (const size of [1, 1400, 9000]) {
      const payload = randomPayload(size);
      const { msg, rinfo } = await udpRoundTrip(client, port, payload, host);
      assert.ok(msg.equals(payload), `${size}-byte datagram echoed intact via ${host}`);
      assert.equal(rinfo.port, port, 'the reply comes from the proxy port');
      assert.equal(rinfo.address, host, 'the reply comes from the address the client sent to');
    }
  } finally {
    client.close();
  }
}

describe(
  'portsplice-docker-proxy: -use-listen-fd, the socket as dockerd makes it',
  {
    skip: HAVE_PYTHON ? false : 'needs python3 to make the socket',
  },
  () => {
    const echo = {};
    const udpEcho = {};

    after(async () => {
      await closeServers(echo[V4], echo[V6], udpEcho[V4], udpEcho[V6]);
    });

    async function backend(proto, host) {
      const pool = proto === 'tcp' ? echo : udpEcho;
      pool[host] ??= proto === 'tcp' ? await startEchoServer({ host }) : await startUdpEcho(host);
      return pool[host];
    }

    const cases = [
      ['Docker 28, TCP over 127.0.0.1', docker28('tcp', V4)],
      ['Docker 28, UDP over 127.0.0.1 (SO_REUSEADDR, IP_PKTINFO)', docker28('udp', V4)],
      ['Docker 28, TCP over [::1] (IPV6_V6ONLY=1)', docker28('tcp', V6)],
      ['Docker 28, UDP over [::1] (IPV6_RECVPKTINFO)', docker28('udp', V6)],
      ['Docker 29, TCP over 127.0.0.1 (filter detached by dockerd)', docker29('tcp', V4)],
      ['Docker 29, UDP over 127.0.0.1 (filter detached by dockerd)', docker29('udp', V4)],
      ['Docker 29, TCP over [::1]', docker29('tcp', V6)],
      ['Docker 29, UDP over [::1]', docker29('udp', V6)],
      ['the drop-all filter left on: TCP', { ...docker29('tcp', V4), filter: 'leave' }],
      ['the drop-all filter left on: UDP', { ...docker29('udp', V6), filter: 'leave' }],
      ['bound but not listening: TCP is put to listen', { proto: 'tcp', host: V4, noListen: true }],
    ];
    for (const [name, socket] of cases) {
      test(`${name}: adopted as is, bytes flow`, async (t) => {
        const target = await backend(socket.proto, socket.host);
        let run;
        t.after(() => stop(run));
        run = await launchLikeDockerd(dockerProxyPath, {
          socket,
          args: listenFdArgs(socket, socket.host, target.port),
        });
        assertAdopted(run, socket);
        if (socket.proto === 'tcp') await assertTcpForwards(run.port, socket.host);
        else await assertUdpForwards(run.port, socket.host);
        // dockerd's SIGINT: exit 0, and the port is free (the stand-in closed its copy).
        run.child.kill('SIGINT');
        assert.deepEqual(await exitOf(run, 2000), { code: 0, signal: null });
        if (socket.proto === 'tcp') await expectRefused(run.port, socket.host);
      });
    }

    for (const proto of ['tcp', 'udp']) {
      test(`dual-stack [::] with IPV6_V6ONLY=0 (${proto}): works over 127.0.0.1 and [::1], V6ONLY stays 0`, async (t) => {
        const target = await backend(proto, V4);
        const socket = {
          proto,
          host: '::',
          v6only: 0,
          reuseaddr: proto === 'tcp',
          pktinfo: proto === 'udp',
          filter: 'detach',
        };
        let run;
        t.after(() => stop(run));
        run = await launchLikeDockerd(dockerProxyPath, {
          socket,
          args: listenFdArgs(socket, V4, target.port),
        });
        assertAdopted(run, socket);
        for (const host of [V4, V6]) {
          if (proto === 'tcp') await assertTcpForwards(run.port, host);
          else await assertUdpForwards(run.port, host);
        }
      });
    }

    test(
      'the soft RLIMIT_NOFILE of 1024 (systemd) is raised to the hard limit',
      { skip: Number(HARD_NOFILE) > 1024 ? false : `the hard limit here is ${HARD_NOFILE}` },
      async (t) => {
        const target = await backend('tcp', V4);
        const socket = { ...docker29('tcp', V4), nofileSoft: 1024 };
        let run;
        t.after(() => stop(run));
        run = await launchLikeDockerd(dockerProxyPath, {
          socket,
          args: listenFdArgs(socket, V4, target.port),
        });
        assertAdopted(run, socket);
        assert.deepEqual(fileLimits(run.report.pid), { soft: HARD_NOFILE, hard: HARD_NOFILE });
      },
    );

    test('a UDP socket for -proto tcp: "1\\n" and the error through dockerd\'s read, exit 1, with fds 0-2 /dev/null', async (t) => {
      const socket = { proto: 'udp', host: V4, pktinfo: true };
      const run = await launchLikeDockerd(dockerProxyPath, {
        socket,
        args: proxyArgs({ proto: 'tcp', hostIp: V4, hostPort: 1, containerPort: 1 }),
      });
      t.after(() => stop(run));
      assert.match(run.report.status, /^1\nunexpected socket type for listener fd: /);
      assert.deepEqual(await exitOf(run), { code: 1, signal: null });
    });
  },
);
