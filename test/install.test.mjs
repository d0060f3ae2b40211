// Installing the packed package as a user would: `npm pack`, then `npm install` of the tarball
// into a clean folder whose PATH has node, npm and sh but no python3, make or C++ compiler,
// offline with an empty npm cache: the runtime dependencies are packed from this checkout's
// node_modules and installed from their tarballs alongside (prom-client, optional and needed
// only by `portsplice --metrics`, is left out with --omit=optional). With the prebuilt
// binaries the splice engine forwards bytes; without them the install still succeeds and
// createProxy() falls back to the stream engine with a warning naming what is missing.
//
// Needs prebuilds/ (`npm run build:prebuilds`); skipped, with the reason, when it is missing
// or when npm cannot pack or install offline here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);

/** Why the cases cannot run here, or undefined. */
let skip;
let tmp;
let tarball;
/** The runtime dependencies as tarballs, so that npm needs no registry. */
let dependencies = [];
let noCompilerPath;

/** Resolves a command on the real PATH. */
function which(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

before(() => {
  if (process.platform !== 'linux') return void (skip = 'the splice engine is Linux only');
  const prebuilt = fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir) : [];
  if (!prebuilt.some((f) => f.endsWith('.node')) || !prebuilt.includes('portsplice-docker-proxy')) {
    return void (skip = `no prebuilt binaries in ${prebuildDir}: run "npm run build:prebuilds" first`);
  }
  const npm = which('npm');
  const sh = which('sh');
  if (!npm || !sh) return void (skip = 'npm or sh is not on PATH');

  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portsplice-install-'));
  // dist/ is what the tests run against; packing must not rebuild it (prepare) or anything else.
  const packed = spawnSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], {
    cwd: root,
    encoding: 'utf8',
  });
  if (packed.status !== 0) return void (skip = `npm pack failed: ${packed.stderr.trim().split('\n').pop()}`);
  tarball = path.join(tmp, JSON.parse(packed.stdout)[0].filename);
  const manifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  for (const name of Object.keys(manifest.dependencies ?? {})) {
    const dep = spawnSync(
      npm,
      [
        'pack',
        '--ignore-scripts',
        '--json',
        '--pack-destination',
        tmp,
        path.join(root, 'node_modules', name),
      ],
      {
        encoding: 'utf8',
      },
    );
    if (dep.status !== 0)
      return void (skip = `cannot pack the dependency ${name}: ${dep.stderr.trim().split('\n').pop()}`);
    dependencies.push(path.join(tmp, JSON.parse(dep.stdout)[0].filename));
  }

  // A bin directory with only what npm needs to run an install script: no compiler, no make,
  // no python3 (node-gyp needs all three).
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(npm, path.join(bin, 'npm'));
  fs.symlinkSync(sh, path.join(bin, 'sh'));
  noCompilerPath = bin;
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/**
 * Installs `tgz` into a new folder with the compiler-free PATH, offline, and returns the
 * folder and npm's output (install scripts in the foreground, so their lines are seen).
 */
function installInto(name, tgz) {
  const app = path.join(tmp, name);
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name, private: true }));
  // Only PATH, HOME and an empty cache: nothing from the npm that runs this test.
  const env = {
    PATH: noCompilerPath,
    HOME: process.env.HOME ?? os.homedir(),
    npm_config_cache: path.join(tmp, `cache-${name}`),
  };
  const result = spawnSync(
    'npm',
    [
      'install',
      '--offline',
      '--no-audit',
      '--no-fund',
      '--omit=optional',
      '--foreground-scripts',
      tgz,
      ...dependencies,
    ],
    { cwd: app, env, encoding: 'utf8', timeout: 60_000 },
  );
  return { app, env, output: `${result.stdout}\n${result.stderr}`, status: result.status };
}

/** Runs a module inside the installed folder that forwards bytes and prints what it saw. */
function forwardFrom(app, env) {
  const script = `
    import net from 'node:net';
    import { execFileSync } from 'node:child_process';
    import { createProxy, dockerProxyPath } from 'portsplice';
    const warnings = [];
    process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
    const echo = net.createServer((s) => s.on('error', () => {}).pipe(s));
    await new Promise((r) => echo.listen(0, '127.0.0.1', r));
    const proxy = createProxy();
    createProxy().close(); // a second proxy: the warning comes once
    const m = await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: echo.address().port } });
    const payload = Buffer.alloc(256 * 1024, 7);
    const got = await new Promise((resolve, reject) => {
      const c = net.connect(m.listen.port, '127.0.0.1');
      const parts = [];
      let n = 0;
      c.on('data', (d) => { parts.push(d); n += d.length; if (n >= payload.length) c.end(); });
      c.on('close', () => resolve(Buffer.concat(parts)));
      c.on('error', reject);
      c.write(payload);
    });
    const stats = proxy.stats().mappings[0].bytes;
    await proxy.close();
    echo.close();
    let explicitSplice = 'ok';
    try { createProxy({ engine: 'splice' }).close(); } catch (e) { explicitSplice = e.message; }
    let dropIn = null;
    try { dropIn = execFileSync(dockerProxyPath, ['-v'], { encoding: 'utf8' }).trim(); } catch (e) { dropIn = 'error: ' + e.message; }
    await new Promise((r) => setImmediate(r));
    console.log(JSON.stringify({ engine: proxy.engine, same: got.equals(payload), spliced: String(stats.spliced), warnings, explicitSplice, dockerProxyPath, dropIn }));
  `;
  const file = path.join(app, 'check.mjs');
  fs.writeFileSync(file, script);
  const out = execFileSync(process.execPath, [file], { cwd: app, env, encoding: 'utf8', timeout: 20_000 });
  return JSON.parse(out.trim().split('\n').pop());
}

function skipIfNeeded(t) {
  if (skip) t.skip(skip);
  return Boolean(skip);
}

test('the packed tarball installs without a compiler and forwards with the prebuilt splice engine', (t) => {
  if (skipIfNeeded(t)) return;
  const { app, env, output, status } = installInto('with-prebuilds', tarball);
  assert.equal(status, 0, output);
  const pkg = path.join(app, 'node_modules', 'portsplice');
  assert.ok(!fs.existsSync(path.join(pkg, 'build')), 'nothing was compiled');
  assert.ok(!fs.existsSync(path.join(pkg, 'native', 'test')), 'native/test/ is not shipped');
  assert.ok(fs.existsSync(path.join(pkg, 'LICENSE')));
  // The source maps point at files that are in the package.
  const map = JSON.parse(fs.readFileSync(path.join(pkg, 'dist', 'index.js.map'), 'utf8'));
  for (const source of map.sources) assert.ok(fs.existsSync(path.resolve(pkg, 'dist', source)), source);

  const seen = forwardFrom(app, env);
  assert.equal(seen.engine, 'splice');
  assert.equal(seen.same, true);
  assert.ok(BigInt(seen.spliced) > 0n, `bytes went through splice: ${seen.spliced}`);
  assert.deepEqual(seen.warnings, []);
  assert.equal(seen.explicitSplice, 'ok');
  assert.equal(
    seen.dockerProxyPath,
    path.join(pkg, 'prebuilds', `${process.platform}-${process.arch}`, 'portsplice-docker-proxy'),
  );
  assert.match(seen.dropIn, /\d+\.\d+\.\d+/);
});

test('without prebuilds or a compiler the install succeeds and createProxy() falls back to the stream engine', (t) => {
  if (skipIfNeeded(t)) return;
  // The same tarball without prebuilds/.
  const unpacked = path.join(tmp, 'unpacked');
  fs.mkdirSync(unpacked);
  execFileSync('tar', ['-xzf', tarball, '-C', unpacked]);
  fs.rmSync(path.join(unpacked, 'package', 'prebuilds'), { recursive: true, force: true });
  const bare = path.join(tmp, 'portsplice-no-prebuilds.tgz');
  execFileSync('tar', ['-czf', bare, '-C', unpacked, 'package']);

  const { app, env, output, status } = installInto('without-prebuilds', bare);
  assert.equal(status, 0, output);
  assert.match(output, /building one needs python3, make, a C\+\+17 compiler/);
  assert.doesNotMatch(output, /Traceback|gyp ERR/);

  const seen = forwardFrom(app, env);
  assert.equal(seen.engine, 'stream');
  assert.equal(seen.same, true);
  assert.equal(seen.spliced, '0');
  assert.equal(seen.warnings.length, 1, JSON.stringify(seen.warnings));
  assert.equal(seen.warnings[0].code, 'PORTSPLICE_STREAM_FALLBACK');
  assert.match(
    seen.warnings[0].message,
    /cannot load the native addon: no prebuilt binary .* falling back to the stream engine/,
  );
  assert.match(seen.explicitSplice, /cannot load the native addon/);
});
