#!/usr/bin/env node
/**
 * The package's install script. It never fails the install: portsplice works without its
 * native parts (createProxy() then falls back to the stream engine and says why), so a
 * missing compiler must not take the whole `npm install` down with it, as node-gyp-build's
 * own install script does.
 *
 *   1. A prebuilt addon (prebuilds/, see scripts/prebuild.mjs) or an earlier build that loads:
 *      nothing to do.
 *   2. Else, with python3, make and a C++ compiler on PATH: build with node-gyp.
 *   3. Else, or if the build fails: say what is missing and succeed.
 *
 * npm shows an install script's output only with --foreground-scripts (or when it fails,
 * which this one never does), so the runtime warning is what most users will see.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const say = (line) => console.log(`portsplice: ${line}`);

/** Undefined when the addon loads from prebuilds/ or build/, else the reason. */
function addonProblem() {
  try {
    require('node-gyp-build')(root);
    return undefined;
  } catch (error) {
    return String(error?.message ?? error).split('\n')[0];
  }
}

/** Whether `name` is an executable file in a directory of PATH. */
function onPath(name) {
  if (path.isAbsolute(name)) return isExecutable(name);
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .some((dir) => dir && isExecutable(path.join(dir, name)));
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The build tools node-gyp needs that are not on PATH. */
function missingTools() {
  const missing = [];
  // node-gyp looks for python3 then python (or $PYTHON / npm_config_python).
  const python = process.env.npm_config_python ?? process.env.PYTHON;
  if (!(python ? onPath(python) : onPath('python3') || onPath('python'))) missing.push('python3');
  if (!onPath('make')) missing.push('make');
  const cxx = process.env.CXX?.split(' ')[0];
  if (!(cxx ? onPath(cxx) : ['c++', 'g++', 'clang++'].some(onPath)))
    missing.push('a C++17 compiler (g++ or clang++)');
  return missing;
}

function main() {
  if (process.platform !== 'linux') {
    say(
      `the splice engine and the docker-proxy drop-in are Linux only; on ${process.platform} createProxy() uses the stream engine`,
    );
    return;
  }
  const problem = addonProblem();
  if (problem === undefined) return;

  const fallback =
    'createProxy() will use the stream engine; "npm rebuild portsplice" builds the splice engine later';
  const missing = missingTools();
  if (missing.length > 0) {
    say(
      `no prebuilt binary for ${process.platform}-${process.arch} loads (${problem}), and building one needs ${missing.join(', ')}, not found on PATH; ${fallback}`,
    );
    return;
  }
  // Under npm, npm_config_node_gyp is npm's own copy of node-gyp (a script run with node).
  const nodeGyp = process.env.npm_config_node_gyp;
  const [command, args] = nodeGyp ? [process.execPath, [nodeGyp, 'rebuild']] : ['node-gyp', ['rebuild']];
  say(
    `no prebuilt binary for ${process.platform}-${process.arch} loads (${problem}); building with node-gyp`,
  );
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (result.error || result.status !== 0) {
    say(
      `the build failed (${result.error?.message ?? `node-gyp exited with ${result.status ?? result.signal}`}); ${fallback}`,
    );
  }
}

try {
  main();
} catch (error) {
  say(`install step failed (${error?.message ?? error}); the stream engine remains available`);
}
process.exitCode = 0;
