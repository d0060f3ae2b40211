// `portsplice` as a service: SIGHUP reloads the config file over real sockets (unchanged
// mappings keep their listeners and connections, removed ones drain, new ones open, bad files
// and failed opens change nothing), the log lines when stdout is not a terminal, and the
// systemd notify protocol against a socket that plays systemd.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { CLI, spawnCli, startCli, stopCli, killAll } from './cli-helpers.mjs';
import {
  V4,
  V6,
  startEchoServer,
  startServer,
  freePort,
  connect,
  pingEcho,
  expectRefused,
  waitClose,
  withTimeout,
  waitFor,
  closeServers,
} from './helpers.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portsplice-service-'));
const servers = [];
after(async () => {
  await killAll();
  await closeServers(...servers);
  fs.rmSync(tmp, { recursive: true, force: true });
});

const spec = (listen, target) => `127.0.0.1:${listen}:127.0.0.1:${target}`;

function writeConfig(file, mappings, extra = {}) {
  fs.writeFileSync(file, JSON.stringify({ ...extra, mappings }, null, 2));
}

/** Waits for the `n`-th stdout line (counting from 1) that matches `re`. */
function nthLine(child, re, n = 1, timeout = 10000) {
  return child.until(() => child.lines.filter((l) => re.test(l))[n - 1], `line ${n} matching ${re}`, timeout);
}

/**
 * Waits until `port` refuses connections: a removed mapping's listener is closed by an engine
 * thread a moment after the reload has been logged (a connection in that moment is served
 * and drains like the others).
 */
function refusedSoon(port, host = V4) {
  return waitFor(
    () =>
      expectRefused(port, host).then(
        () => true,
        () => false,
      ),
    { timeout: 3000, interval: 20, what: `${host} port ${port} to refuse connections` },
  );
}

/** A server that answers every connection with its name, then echoes. */
async function namedServer(name) {
  const s = await startServer((socket) => {
    socket.write(`${name}\n`);
    socket.pipe(socket);
  });
  servers.push(s);
  return s;
}

/** Connects through `port` and reads the greeting of the server behind it. */
async function greeting(port) {
  const socket = await connect(port);
  try {
    const line = await withTimeout(
      new Promise((resolve, reject) => {
        let text = '';
        socket.on('data', (d) => {
          text += d;
          if (text.includes('\n')) resolve(text.split('\n')[0]);
        });
        socket.once('close', () => reject(new Error(`closed before a greeting via ${port}`)));
      }),
      5000,
      `greeting via ${port}`,
    );
    return line;
  } finally {
    socket.destroy();
  }
}

test('SIGHUP keeps unchanged mappings and their connections, drains removed ones, opens new ones', async () => {
  const echo = await startEchoServer();
  servers.push(echo);
  const [pa, pb, pc] = [await freePort(), await freePort(), await freePort()];
  const file = path.join(tmp, 'reload.json');
  writeConfig(file, [spec(pa, echo.port), spec(pb, echo.port)]);
  const { child } = await startCli(['--config', file, '--drain-timeout', '5'], 2);
  await nthLine(child, /^portsplice: started .*: forwarding 2 mappings/);

  const viaA = await connect(pa);
  const viaB = await connect(pb);
  await pingEcho(viaA);
  await pingEcho(viaB);

  writeConfig(file, [spec(pa, echo.port), spec(pc, echo.port)]);
  child.kill('SIGHUP');
  await nthLine(child, /^portsplice: SIGHUP: reloaded .*: 1 unchanged, 1 added, 1 removed$/);
  // The details follow the summary (and may come in a later chunk of the pipe).
  await nthLine(child, new RegExp(`tcp 127\\.0\\.0\\.1:${pc} -> .* \\(added\\)$`));
  await nthLine(
    child,
    new RegExp(`tcp 127\\.0\\.0\\.1:${pb} -> .* removed: draining 1 open connection for up to 5 s$`),
  );

  // Kept: the same listener and the open connection go on.
  await pingEcho(viaA);
  const again = await connect(pa);
  await pingEcho(again);
  again.destroy();
  // Removed: no new connections, but the open one drains.
  await refusedSoon(pb);
  await pingEcho(viaB);
  // New.
  const viaC = await connect(pc);
  await pingEcho(viaC);
  viaC.destroy();

  viaB.end();
  await waitClose(viaB, 5000);
  await nthLine(child, /^portsplice: mapping \d+ drained$/);

  assert.equal(child.exitInfo, undefined, 'still running');
  viaA.destroy();
  const exit = await stopCli(child);
  assert.equal(exit.code, 0, child.describe());
  // 'exit' can come before the last stdout chunk: wait for the pipe to close.
  await withTimeout(
    new Promise((resolve) => (child.stdout.closed ? resolve() : child.stdout.once('close', resolve))),
    5000,
    'stdout to close',
  );
  assert.equal(child.lines.at(-1), 'portsplice: stopped', child.describe());
});

test('SIGHUP keeps a -p string without host IP on IPv4 and IPv6; given 0.0.0.0 instead, it is reopened on IPv4 only', async () => {
  const echo = await startEchoServer();
  servers.push(echo);
  const port = await freePort();
  const file = path.join(tmp, 'dual.json');
  writeConfig(file, [`${port}:127.0.0.1:${echo.port}`]);
  const { child } = await startCli(['--config', file, '--drain-timeout', '5'], 2);
  await nthLine(child, /^portsplice: started .*: forwarding 2 mappings/);
  const via6 = await connect(port, V6);
  await pingEcho(via6);

  fs.writeFileSync(file, JSON.stringify([`${port}:127.0.0.1:${echo.port}`], null, 4)); // same mappings
  child.kill('SIGHUP');
  await nthLine(child, /SIGHUP: reloaded .*: 1 unchanged, 0 added, 0 removed$/);
  await pingEcho(via6);

  writeConfig(file, [`0.0.0.0:${port}:127.0.0.1:${echo.port}`]);
  child.kill('SIGHUP');
  await nthLine(child, /SIGHUP: reloaded .*: 0 unchanged, 1 added, 1 removed$/);
  await nthLine(child, new RegExp(`tcp 0\\.0\\.0\\.0:${port} -> .* \\(added\\)$`));
  await refusedSoon(port, V6);
  await pingEcho(via6); // the open connection drains
  const via4 = await connect(port, V4);
  await pingEcho(via4);
  via4.destroy();
  via6.destroy();
  assert.equal((await stopCli(child)).code, 0, child.describe());
});

test("SIGHUP: a file's engine and command settings take effect on restart only, and the log names those that changed", async () => {
  const echo = await startEchoServer();
  servers.push(echo);
  const port = await freePort();
  const file = path.join(tmp, 'settings.json');
  writeConfig(file, [spec(port, echo.port)], { threads: 1, drainTimeout: 5, interval: 2 });
  const { child } = await startCli(['--config', file], 1);
  writeConfig(file, [spec(port, echo.port)], { threads: 2, drainTimeout: 7, interval: 2 });
  child.kill('SIGHUP');
  await nthLine(child, /^portsplice: SIGHUP: changes to threads, drainTimeout take effect on restart only$/);
  await nthLine(child, /SIGHUP: reloaded .*: 1 unchanged, 0 added, 0 removed$/);
  assert.equal((await stopCli(child)).code, 0, child.describe());
});

test('SIGHUP with a changed target on the same port moves new connections to it; a drain that times out says how many it reset', async () => {
  const one = await namedServer('one');
  const two = await namedServer('two');
  const port = await freePort();
  const file = path.join(tmp, 'takeover.json');
  writeConfig(file, [spec(port, one.port)]);
  const { child } = await startCli(['--config', file, '--drain-timeout', '0.3'], 1);
  assert.equal(await greeting(port), 'one');
  const held = await connect(port); // stays open past the drain timeout

  writeConfig(file, [spec(port, two.port)]);
  child.kill('SIGHUP');
  await nthLine(child, /SIGHUP: reloaded .*: 0 unchanged, 1 added, 1 removed$/);
  assert.equal(await greeting(port), 'two');
  await nthLine(child, /^portsplice: mapping \d+ drained: 1 connection reset at the timeout$/);
  const closed = await waitClose(held, 5000);
  assert.equal(closed.error?.code, 'ECONNRESET');
  assert.equal((await stopCli(child)).code, 0);
});

test('SIGHUP with a bad file, or a mapping that cannot open, changes nothing and says why', async () => {
  const echo = await startEchoServer();
  servers.push(echo);
  const taken = await startEchoServer(); // holds a port the new config asks for
  servers.push(taken);
  const [pa, pb] = [await freePort(), await freePort()];
  const file = path.join(tmp, 'bad.json');
  writeConfig(file, [spec(pa, echo.port), spec(pb, echo.port)]);
  const { child } = await startCli(['--config', file], 2);
  const viaA = await connect(pa);

  fs.writeFileSync(file, '{"mappings": [');
  child.kill('SIGHUP');
  const rejected = await nthLine(child, /SIGHUP: .* rejected, still running the previous config: /);
  assert.match(rejected, /bad\.json/);

  writeConfig(file, [
    spec(pa, echo.port),
    { proto: 'tcp', listen: { port: 'x' }, target: { host: V4, port: 1 } },
  ]);
  child.kill('SIGHUP');
  assert.match(await nthLine(child, /rejected, still running the previous config/, 2), /port/);

  // pb removed, taken.port added: the add fails, pb comes back.
  writeConfig(file, [spec(pa, echo.port), spec(taken.port, echo.port)]);
  child.kill('SIGHUP');
  const failed = await nthLine(child, /SIGHUP: .* not applied, still running the previous config: /);
  assert.match(failed, new RegExp(`cannot listen on tcp 127\\.0\\.0\\.1:${taken.port} .*EADDRINUSE`));

  await pingEcho(viaA);
  for (const p of [pa, pb]) {
    const s = await connect(p);
    await pingEcho(s);
    s.destroy();
  }
  // The port that was in use still belongs to its server.
  const t = await connect(taken.port);
  await pingEcho(t);
  t.destroy();

  // A later good reload still works from the restored state.
  writeConfig(file, [spec(pa, echo.port)]);
  child.kill('SIGHUP');
  await nthLine(child, /SIGHUP: reloaded .*: 1 unchanged, 0 added, 1 removed$/);
  await refusedSoon(pb);
  viaA.destroy();
  assert.equal((await stopCli(child)).code, 0);
});

test('SIGHUP without --config does not kill the process', async () => {
  const echo = await startEchoServer();
  servers.push(echo);
  const { child, ports } = await startCli(['-p', spec(0, echo.port)], 1);
  child.kill('SIGHUP');
  await nthLine(child, /^portsplice: SIGHUP: no --config file to reload; nothing changed$/);
  const s = await connect(ports[0]);
  await pingEcho(s);
  s.destroy();
  assert.equal((await stopCli(child)).code, 0);
});

// A socket that plays systemd: receives each notification datagram, closes any descriptors
// passed with it (that answers systemd-notify's BARRIER=1, as the manager does), and prints
// each message as one JSON line. Python, because Node has no AF_UNIX datagram sockets.
const FAKE_SYSTEMD = String.raw`
import array, json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps("LISTENING"), flush=True)
while True:
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    print(json.dumps(msg.decode()), flush=True)
`;

const HAVE_NOTIFY_TOOLS =
  spawnSync('python3', ['-c', 'import socket; socket.AF_UNIX']).status === 0 &&
  spawnSync('systemd-notify', ['--help'], { stdio: 'ignore' }).status === 0;

test(
  'Type=notify: READY=1 with a STATUS once listening, RELOADING=1 and READY=1 around a reload, STOPPING=1 on SIGTERM',
  { skip: HAVE_NOTIFY_TOOLS ? false : 'needs python3 (to play systemd) and systemd-notify' },
  async (t) => {
    const socketPath = path.join(tmp, 'notify.sock');
    const fake = spawn('python3', ['-c', FAKE_SYSTEMD, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    const messages = [];
    let partial = '';
    let onMessage = () => {};
    fake.stdout.setEncoding('utf8').on('data', (d) => {
      partial += d;
      const parts = partial.split('\n');
      partial = parts.pop();
      for (const p of parts) messages.push(JSON.parse(p));
      onMessage();
    });
    const until = (pred, what) =>
      withTimeout(
        new Promise((resolve) => {
          onMessage = () => {
            const found = messages.filter((m) => m !== 'BARRIER=1').find(pred);
            if (found) resolve(found);
          };
          onMessage();
        }),
        10000,
        `${what}; got ${JSON.stringify(messages)}`,
      );
    t.after(async () => {
      fake.kill('SIGKILL');
    });
    await until((m) => m === 'LISTENING', 'the fake systemd');
    const echo = await startEchoServer();
    servers.push(echo);
    const file = path.join(tmp, 'notify.json');
    writeConfig(file, [spec(0, echo.port)]);
    const child = spawnCli(['--config', file], { env: { NOTIFY_SOCKET: socketPath } });

    assert.equal(
      await until((m) => m.startsWith('READY=1'), 'READY=1'),
      `READY=1\nSTATUS=forwarding 1 mapping (${'splice'} engine)`,
    );
    child.kill('SIGHUP');
    const reloading = await until((m) => m.startsWith('RELOADING=1'), 'RELOADING=1');
    assert.match(reloading, /^RELOADING=1\nMONOTONIC_USEC=\d+$/);
    await until(
      (m, i, all) => m.startsWith('READY=1') && all.indexOf(m) !== all.lastIndexOf(m),
      'a second READY=1',
    );

    child.kill('SIGTERM');
    assert.equal(
      await until((m) => m.startsWith('STOPPING=1'), 'STOPPING=1'),
      'STOPPING=1\nSTATUS=SIGTERM: draining, no open connections',
    );
    assert.equal((await child.waitExit()).code, 0, child.describe());
    const order = messages.filter((m) => m !== 'BARRIER=1' && m !== 'LISTENING').map((m) => m.split('\n')[0]);
    assert.deepEqual(order, ['READY=1', 'RELOADING=1', 'READY=1', 'STOPPING=1']);
  },
);

const UNIT = new URL('../contrib/systemd/portsplice.service', import.meta.url);
const HAVE_ANALYZE = spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).status === 0;

test(
  'contrib/systemd/portsplice.service: systemd accepts it, it runs this command, and its exposure is low',
  { skip: HAVE_ANALYZE ? false : 'needs systemd-analyze' },
  () => {
    const text = fs.readFileSync(UNIT, 'utf8');
    const settings = new Map();
    for (const line of text.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line);
      if (m) settings.set(m[1], [...(settings.get(m[1]) ?? []), m[2]]);
    }
    const one = (key) => settings.get(key)?.join(' ');
    assert.equal(one('Type'), 'notify');
    assert.equal(one('NotifyAccess'), 'all', 'systemd-notify, a child, sends the notifications');
    assert.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID');
    assert.equal(one('DynamicUser'), 'yes');
    assert.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
    assert.equal(one('RestrictAddressFamilies'), 'AF_INET AF_INET6 AF_UNIX');
    const exec = one('ExecStart').split(' ');
    assert.deepEqual(exec.slice(1), ['--config', '/etc/portsplice/config.json']);

    // systemd-analyze checks that ExecStart exists: point it at this checkout's command.
    const unit = path.join(tmp, 'portsplice.service');
    fs.writeFileSync(unit, text.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath} ${CLI}`));
    const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', timeout: 20000 });
    assert.equal(verify.status, 0, verify.stderr);
    assert.equal(verify.stderr.trim(), '', 'no unknown or bad settings');
    const security = spawnSync('systemd-analyze', ['security', '--offline=yes', '--threshold=30', unit], {
      encoding: 'utf8',
      timeout: 20000,
    });
    if (!/unrecognized option|Unknown option/.test(security.stderr)) {
      assert.equal(
        security.status,
        0,
        `exposure above 3.0:\n${security.stdout.split('\n').slice(-3).join('\n')}`,
      );
    }
  },
);
