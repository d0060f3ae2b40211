#!/usr/bin/env node
/**
 * `npm run prebuild`: builds the prebuilt binaries that ship inside the package, so that
 * installing it needs no compiler. prebuildify makes one Node-API addon per platform, arch
 * and libc (Node-API: one build serves every Node version from 20 on) in
 * prebuilds/<platform>-<arch>/node.napi.<libc>.node, where node-gyp-build finds it; the
 * docker-proxy drop-in (statically linked, so one binary serves glibc and musl alike) is
 * copied next to it, where dockerProxyPath finds it.
 *
 * The addon is built against the running Node's headers (`--target`): prebuildify's default
 * Node-API target is the newest Node, whose headers it would download.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

/** prebuildify from node_modules, else from PATH (e.g. `npm install --prefix /tmp/pb prebuildify`). */
function prebuildifyCommand() {
  try {
    return [process.execPath, require.resolve('prebuildify/bin.js')];
  } catch {
    return ['prebuildify'];
  }
}

// Build against the headers installed with this Node (official tarballs and distribution
// packages have include/node/) rather than let node-gyp download them for --target.
const env = { ...process.env };
const installedHeaders = path.resolve(path.dirname(process.execPath), '..');
if (!env.npm_config_nodedir && fs.existsSync(path.join(installedHeaders, 'include', 'node', 'node_api.h'))) {
  env.npm_config_nodedir = installedHeaders;
}

// Under npm, npm_config_node_gyp is npm's own node-gyp; prebuildify spawns it directly.
const nodeGyp = process.env.npm_config_node_gyp ?? 'node-gyp';
const [command, ...prefix] = prebuildifyCommand();
const args = [
  ...prefix,
  '--napi',
  '--strip',
  '--tag-libc',
  '--target',
  process.versions.node,
  '--node-gyp',
  nodeGyp,
];
console.log(`prebuild: ${[command, ...args].join(' ')}`);
const result = spawnSync(command, args, { cwd: root, env, stdio: 'inherit' });
if (result.error) {
  console.error(`prebuild: cannot run prebuildify (${result.error.message}); it is a devDependency`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status ?? 1);

const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const dropIn = path.join(root, 'build', 'Release', 'portsplice-docker-proxy');
if (!fs.existsSync(dropIn)) {
  console.error(`prebuild: ${dropIn} was not built`);
  process.exit(1);
}
const shipped = path.join(dir, 'portsplice-docker-proxy');
fs.copyFileSync(dropIn, shipped);
fs.chmodSync(shipped, 0o755);
const strip = spawnSync('strip', [shipped], { stdio: 'inherit' });
if (strip.status !== 0) console.warn('prebuild: strip failed; shipping the binary unstripped');
for (const name of fs.readdirSync(dir)) {
  console.log(
    `prebuild: ${path.relative(root, path.join(dir, name))} (${fs.statSync(path.join(dir, name)).size} bytes)`,
  );
}
