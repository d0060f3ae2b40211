// `portsplice docker-proxy [path | install [DIR]]`: the path of the drop-in, and a copy of it
// in a stable directory that runs and forwards, with the daemon.json lines to use it.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { dockerProxyPath } from '../dist/index.js';
import { CLI } from './cli-helpers.mjs';
import {
  V4,
  randomPayload,
  sha256,
  startEchoServer,
  freePort,
  exchange,
  withTimeout,
  closeServers,
  spawnChild,
} from './helpers.mjs';

const VERSION = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portsplice-dp-install-'));
after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Runs the CLI to completion (bounded). */
function cli(args, { env, cwd } = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    timeout: 15_000,
    env: { ...process.env, ...env },
    cwd,
  });
  assert.equal(r.error, undefined, `portsplice ${args.join(' ')}: ${r.error?.message}`);
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The daemon.json lines of `install`'s output, parsed as the JSON object they belong in. */
function daemonJson(out) {
  const lines = out.split('\n').filter((l) => /^\s+"userland-proxy/.test(l));
  return JSON.parse(`{${lines.join('\n')}}`);
}

/** Starts `binary` as dockerd starts docker-proxy (fd 3 a pipe) and waits for "0\n". */
async function startDropIn(binary, hostPort, containerPort) {
  const args = ['-proto', 'tcp', '-host-ip', V4, '-host-port', String(hostPort), '-container-ip', V4];
  const child = spawnChild(binary, [...args, '-container-port', String(containerPort)], { statusPipe: true });
  const status = await withTimeout(child.statusDone, 5000, 'status of the installed drop-in', () =>
    child.kill('SIGKILL'),
  );
  assert.equal(status, '0\n');
  return child;
}

async function stopChild(child) {
  child.kill('SIGTERM');
  await withTimeout(child.exited, 5000, 'drop-in exit', () => child.kill('SIGKILL'));
}

test('docker-proxy (and docker-proxy path) print the path of the drop-in', () => {
  for (const args of [['docker-proxy'], ['docker-proxy', 'path']]) {
    const r = cli(args);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${dockerProxyPath}\n`);
    assert.ok(path.isAbsolute(r.out.trim()));
    assert.ok(fs.statSync(r.out.trim()).mode & 0o111, 'executable');
  }
});

test('docker-proxy install DIR copies a binary that runs and forwards, and prints the daemon.json lines', async (t) => {
  const dir = path.join(tmp, 'usr', 'local', 'libexec', 'docker');
  const r = cli(['docker-proxy', 'install', dir]);
  assert.equal(r.code, 0, r.err);
  const installed = path.join(dir, 'portsplice-docker-proxy');
  assert.match(r.out, new RegExp(`^installed ${installed} \\(.*${VERSION.replace(/\./g, '\\.')}.*\\)$`, 'm'));
  assert.deepEqual(daemonJson(r.out), { 'userland-proxy': true, 'userland-proxy-path': installed });
  assert.equal(fs.statSync(installed).mode & 0o777, 0o755);
  assert.ok(fs.readFileSync(installed).equals(fs.readFileSync(dockerProxyPath)), 'the same bytes');
  assert.deepEqual(fs.readdirSync(dir), ['portsplice-docker-proxy'], 'no temporary file left');

  const echo = await startEchoServer();
  const child = await startDropIn(installed, await freePort(), echo.port);
  t.after(async () => {
    await stopChild(child);
    await closeServers(echo);
  });
  const port = Number(child.spawnargs[child.spawnargs.indexOf('-host-port') + 1]);
  const payload = randomPayload(512 * 1024);
  const got = await exchange(port, V4, payload);
  assert.equal(got.sha256, sha256(payload));

  // Reinstalling over the copy that is running (an upgrade under a live dockerd) works: the
  // new file is renamed into place, and the running proxy goes on serving.
  const again = cli(['docker-proxy', 'install', dir]);
  assert.equal(again.code, 0, again.err);
  const second = await exchange(port, V4, payload);
  assert.equal(second.sha256, sha256(payload));
});

test('docker-proxy install takes a relative DIR and prints the absolute path', () => {
  const r = cli(['docker-proxy', 'install', 'rel/bin'], { cwd: tmp });
  assert.equal(r.code, 0, r.err);
  assert.equal(
    daemonJson(r.out)['userland-proxy-path'],
    path.join(tmp, 'rel', 'bin', 'portsplice-docker-proxy'),
  );
});

test('docker-proxy install reports a DIR it cannot create, and bad arguments', () => {
  const file = path.join(tmp, 'a-file');
  fs.writeFileSync(file, '');
  let r = cli(['docker-proxy', 'install', path.join(file, 'sub')]);
  assert.equal(r.code, 1);
  assert.match(r.err, /^portsplice docker-proxy: cannot install into .*a-file\/sub: ENOTDIR/);
  assert.equal(r.out, '');

  // mkdir(2) in procfs fails with ENOENT under a parent that exists: reported, not retried
  // for ever (the timeout of cli() would fail this test).
  r = cli(['docker-proxy', 'install', '/proc/portsplice-no-such-dir']);
  assert.equal(r.code, 1);
  assert.match(r.err, /cannot install into \/proc\/portsplice-no-such-dir: ENOENT/);

  r = cli(['docker-proxy', 'frob']);
  assert.equal(r.code, 2);
  assert.equal(
    r.err,
    `portsplice docker-proxy: unknown action "frob" (path or install)\nTry 'portsplice docker-proxy --help'.\n`,
  );

  r = cli(['docker-proxy', 'install', 'a', 'b']);
  assert.equal(r.code, 2);
  assert.match(r.err, /unexpected argument: "b"/);

  r = cli(['docker-proxy', '--help']);
  assert.equal(r.code, 0);
  assert.match(r.out, /install \[DIR\]/);
});

test('docker-proxy says how to get the binary when it was not built', () => {
  const missing = path.join(tmp, 'not-built', 'portsplice-docker-proxy');
  for (const args of [['docker-proxy'], ['docker-proxy', 'install', path.join(tmp, 'never')]]) {
    const r = cli(args, { env: { PORTSPLICE_DOCKER_PROXY: missing } });
    assert.equal(r.code, 1);
    assert.match(r.err, /does not exist: there is no prebuilt drop-in .* "npm rebuild portsplice"/);
  }
  assert.ok(!fs.existsSync(path.join(tmp, 'never')), 'nothing created');
});
