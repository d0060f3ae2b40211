// portsplice-docker-proxy, the drop-in replacement for Docker's docker-proxy: its flags, the
// readiness protocol on fd 3, the socket passed as fd 4, forwarding, and stopping on signals.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import dgram from 'node:dgram';

import { dockerProxyPath } from '../dist/index.js';
import {
  V4,
  V6,
  MiB,
  sha256,
  randomPayload,
  withTimeout,
  startEchoServer,
  freePort,
  connect,
  exchange,
  expectRefused,
  pingEcho,
  closeServers,
} from './helpers.mjs';

const VERSION = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
const HAVE_PYTHON = spawnSync('python3', ['-c', 'pass']).status === 0;

/** Every process started here, killed in the final `after` if still running. */
const children = new Set();

after(() => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

/**
 * Start `command args` with fd 3 a pipe, as dockerd does. Returns { child, exited, status(),
 * stdout, stderr }: `exited` resolves { code, signal }; `status()` resolves everything written
 * to fd 3 once the proxy closes it (it does so right after writing), bounded.
 */
function launch(args, { command = dockerProxyPath, fd3 = true } = {}) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe', ...(fd3 ? ['pipe'] : [])] });
  children.add(child);
  const run = { child, stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (d) => (run.stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (run.stderr += d));
  run.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const statusDone = fd3
    ? new Promise((resolve) => {
        let text = '';
        const pipe = child.stdio[3];
        pipe.setEncoding('utf8');
        pipe.on('data', (d) => (text += d));
        pipe.on('error', () => {});
        pipe.on('close', () => resolve(text));
      })
    : Promise.resolve('');
  run.status = () =>
    withTimeout(statusDone, 5000, `status on fd 3 from ${args.join(' ')}`, () => child.kill('SIGKILL'));
  return run;
}

/** Wait for a process to exit, bounded; resolves { code, signal }. */
function exitOf(run, timeout = 5000) {
  return withTimeout(run.exited, timeout, 'proxy exit', () => run.child.kill('SIGKILL'));
}

/** Kill a proxy and wait for it, ignoring errors (for finally blocks). */
async function stop(run) {
  if (!run) return;
  if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
  await exitOf(run).catch(() => {});
}

function proxyArgs({ proto = 'tcp', hostIp = V4, hostPort, containerIp = V4, containerPort }) {
  return [
    '-proto',
    proto,
    '-host-ip',
    hostIp,
    '-host-port',
    String(hostPort),
    '-container-ip',
    containerIp,
    '-container-port',
    String(containerPort),
  ];
}

/**
 * Start a forwarding proxy on a free port of `hostIp` and wait for "0\n". A port taken between
 * freePort() and the proxy's bind is retried. Resolves the run with `port` set.
 */
async function startForwarder({ proto = 'tcp', hostIp = V4, ...rest }) {
  for (let attempt = 0; ; attempt++) {
    const hostPort = await freePort(hostIp);
    const run = launch(proxyArgs({ proto, hostIp, hostPort, ...rest }));
    const status = await run.status();
    if (status === '0\n') return Object.assign(run, { port: hostPort });
    await stop(run);
    if (attempt < 3 && /EADDRINUSE/.test(status)) continue;
    throw new Error(`proxy did not start: status ${JSON.stringify(status)}, stderr: ${run.stderr}`);
  }
}

/** A UDP echo server on 127.0.0.1. */
async function startUdpEcho() {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise((resolve) => socket.bind(0, V4, resolve));
  return { port: socket.address().port, close: () => new Promise((resolve) => socket.close(resolve)) };
}

/** Send one datagram from `socket` and resolve the first reply { msg, rinfo }, bounded. */
function udpRoundTrip(socket, port, payload) {
  return withTimeout(
    new Promise((resolve) => {
      socket.once('message', (msg, rinfo) => resolve({ msg, rinfo }));
      socket.send(payload, port, V4);
    }),
    3000,
    `udp echo via ${V4}:${port}`,
  );
}

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

  test('TCP: "0\\n" on fd 3, then 1 MiB byte-exact both ways, with every Go flag syntax', async () => {
    echo ??= await startEchoServer();
    let run;
    try {
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
    } finally {
      await stop(run);
    }
  });

  test('TCP: a port in use fails with "1\\n" and the bind error, exit 1', async () => {
    echo ??= await startEchoServer();
    let first;
    try {
      first = await startForwarder({ containerPort: echo.port });
      const second = launch(proxyArgs({ hostPort: first.port, containerPort: echo.port }));
      const status = await second.status();
      assert.match(status, /^1\n/);
      assert.match(status, /address already in use|EADDRINUSE/i);
      assert.deepEqual(await exitOf(second), { code: 1, signal: null });
    } finally {
      await stop(first);
    }
  });

  test('TCP: IPv6 host address (::1) to an IPv4 container address', async () => {
    echo ??= await startEchoServer();
    let run;
    try {
      run = await startForwarder({ hostIp: V6, containerPort: echo.port });
      const payload = randomPayload(64 * 1024);
      const received = await exchange(run.port, V6, payload);
      assert.equal(received.sha256, sha256(payload));
    } finally {
      await stop(run);
    }
  });

  test('UDP: datagrams are echoed back from the proxy port', async () => {
    udpEcho ??= await startUdpEcho();
    const client = dgram.createSocket('udp4');
    let run;
    try {
      run = await startForwarder({ proto: 'udp', containerPort: udpEcho.port });
      await new Promise((resolve) => client.bind(0, V4, resolve));
      for (const size of [1, 1400, 9000]) {
        const payload = randomPayload(size);
        const { msg, rinfo } = await udpRoundTrip(client, run.port, payload);
        assert.ok(msg.equals(payload), `${size}-byte datagram echoed intact`);
        assert.equal(rinfo.port, run.port, 'the reply comes from the proxy port');
        assert.equal(rinfo.address, V4);
      }
    } finally {
      client.close();
      await stop(run);
    }
  });

  test('without fd 3 (run by hand) it still serves', async () => {
    echo ??= await startEchoServer();
    const hostPort = await freePort();
    const run = launch(proxyArgs({ hostPort, containerPort: echo.port }), { fd3: false });
    try {
      let socket;
      for (let i = 0; i < 100 && !socket; i++) {
        socket = await connect(hostPort, V4, { timeout: 1000 }).catch(() => undefined);
        if (!socket) await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.ok(socket, 'the port accepts connections');
      await pingEcho(socket);
      socket.destroy();
    } finally {
      await stop(run);
    }
  });
});

describe('portsplice-docker-proxy: stopping', () => {
  let echo;

  after(async () => {
    await closeServers(echo);
  });

  for (const signal of ['SIGINT', 'SIGTERM']) {
    test(`${signal}: exits 0 within 1 s with a connection open; the port is then refused`, async () => {
      echo ??= await startEchoServer();
      let run;
      let socket;
      try {
        run = await startForwarder({ containerPort: echo.port });
        socket = await connect(run.port, V4);
        await pingEcho(socket);
        const start = Date.now();
        run.child.kill(signal);
        assert.deepEqual(await exitOf(run, 1000), { code: 0, signal: null });
        assert.ok(Date.now() - start < 1000, `exited in ${Date.now() - start} ms`);
        await expectRefused(run.port, V4);
      } finally {
        socket?.destroy();
        await stop(run);
      }
    });
  }
});

/**
 * Run the proxy as dockerd 28+ does with -use-listen-fd: a python3 helper binds (and for TCP
 * listens on) a socket, puts it on fd 4, prints its port and execs the proxy, which inherits
 * the test's fd 3 pipe. Resolves the run with `port` set once the port is known.
 */
async function launchWithListenFd(proto, containerPort) {
  const script = `
import os, socket, sys
proto, binary, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if proto == 'tcp':
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 0))
    s.listen()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, getattr(socket, 'IP_PKTINFO', 8), 1)  # 8 on Linux
    s.bind(('127.0.0.1', 0))
os.dup2(s.fileno(), 4)
os.set_inheritable(4, True)
sys.stdout.write('PORT %d\\n' % s.getsockname()[1])
sys.stdout.flush()
os.execv(binary, [binary] + args)
`;
  // The host port is what dockerd would pass; the proxy serves fd 4's port whatever it says.
  const args = [...proxyArgs({ proto, hostPort: 1, containerPort }), '-use-listen-fd'];
  const run = launch(['-c', script, proto, dockerProxyPath, ...args], { command: 'python3' });
  const status = await run.status();
  const match = /^PORT (\d+)\n/.exec(run.stdout);
  if (status !== '0\n' || !match) {
    await stop(run);
    throw new Error(`proxy with fd 4 did not start: status ${JSON.stringify(status)}, stderr: ${run.stderr}`);
  }
  return Object.assign(run, { port: Number(match[1]) });
}

describe('portsplice-docker-proxy: -use-listen-fd', { skip: HAVE_PYTHON ? false : 'needs python3' }, () => {
  let echo;
  let udpEcho;

  after(async () => {
    await closeServers(echo, udpEcho);
  });

  test('TCP: serves the listening socket passed as fd 4', async () => {
    echo = await startEchoServer();
    let run;
    try {
      run = await launchWithListenFd('tcp', echo.port);
      const payload = randomPayload(256 * 1024);
      const received = await exchange(run.port, V4, payload);
      assert.equal(received.sha256, sha256(payload));
      run.child.kill('SIGINT');
      assert.deepEqual(await exitOf(run, 1000), { code: 0, signal: null });
      await expectRefused(run.port, V4);
    } finally {
      await stop(run);
    }
  });

  test('UDP: serves the bound socket passed as fd 4', async () => {
    udpEcho = await startUdpEcho();
    const client = dgram.createSocket('udp4');
    let run;
    try {
      run = await launchWithListenFd('udp', udpEcho.port);
      await new Promise((resolve) => client.bind(0, V4, resolve));
      const payload = Buffer.from('ping over fd 4');
      const { msg, rinfo } = await udpRoundTrip(client, run.port, payload);
      assert.ok(msg.equals(payload));
      assert.equal(rinfo.port, run.port);
    } finally {
      client.close();
      await stop(run);
    }
  });
});
