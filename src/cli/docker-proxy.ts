/**
 * `portsplice docker-proxy [path | install [DIR]]`: where the drop-in is, and a copy of it in
 * a stable place for dockerd. Pointing dockerd into node_modules/ is fragile: the path
 * changes (or vanishes) with every reinstall, upgrade, `npm prune` or move of the project, and
 * dockerd only notices when it next publishes a port.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { dockerProxyPath } from '../docker-proxy-path.js';
import type { Streams } from './streams.js';

/** Where `install` puts the binary when no DIR is given (next to Docker's own helpers). */
const DEFAULT_INSTALL_DIR = '/usr/local/libexec/docker';
const BINARY = 'portsplice-docker-proxy';
/** How long the installed binary gets to answer `-v`. */
const VERIFY_TIMEOUT_MS = 5000;

const DOCKER_PROXY_HELP = `Usage: portsplice docker-proxy [path]
       portsplice docker-proxy install [DIR]

path (the default)  Print the absolute path of the portsplice-docker-proxy binary in this
                    installation of the package.
install [DIR]       Copy it to DIR/${BINARY} (default DIR: ${DEFAULT_INSTALL_DIR}),
                    check that the copy runs, and print the lines for /etc/docker/daemon.json.
                    Run it again after upgrading portsplice.

dockerd should not point into node_modules/: that path changes or disappears whenever the
project is reinstalled, upgraded or moved.`;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A missing drop-in, said with what to do about it. */
function checkBuilt(): string | undefined {
  if (fs.existsSync(dockerProxyPath)) return undefined;
  return (
    `${dockerProxyPath} does not exist: there is no prebuilt drop-in for ` +
    `${process.platform}-${process.arch} and it was not built; build it with "npm rebuild portsplice" ` +
    `(needs python3, make and a C++17 compiler; Linux only)`
  );
}

/**
 * `mkdir -p`, one level at a time. Not fs.mkdirSync(dir, { recursive: true }): Node 20 retries
 * for ever when mkdir(2) fails with ENOENT under a parent that exists (procfs does that, e.g.
 * /proc/x), spinning a core; here each level is tried once.
 */
function makeDirectories(dir: string): void {
  const missing: string[] = [];
  for (let d = dir; !fs.existsSync(d); d = path.dirname(d)) {
    missing.unshift(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of missing) {
    try {
      fs.mkdirSync(d, 0o755);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/**
 * Copies the binary into `dir` under a temporary name and renames it over the target, so that
 * a dockerd starting the proxy at that moment sees the old or the new file, never half of one,
 * and a running copy does not make the write fail (ETXTBSY: a running executable cannot be
 * opened for writing, but it can be replaced by rename).
 */
function installCopy(dir: string): string {
  const target = path.join(dir, BINARY);
  makeDirectories(dir);
  const temporary = path.join(dir, `.${BINARY}.${process.pid}.tmp`);
  try {
    fs.copyFileSync(dockerProxyPath, temporary);
    fs.chmodSync(temporary, 0o755);
    fs.renameSync(temporary, target);
  } catch (err) {
    fs.rmSync(temporary, { force: true });
    throw err;
  }
  return target;
}

function describeFsError(err: unknown, dir: string): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM') {
    return `cannot write to ${dir}: permission denied (run it as root, e.g. with sudo, or give a DIR you can write to)`;
  }
  return `cannot install into ${dir}: ${errorText(err)}`;
}

/** Runs `portsplice docker-proxy ARGS`; resolves with the exit status. */
export function runDockerProxy(argv: readonly string[], io: Streams): number {
  const fail = (message: string, status = 1): number => {
    io.stderr.write(`portsplice docker-proxy: ${message}\n`);
    return status;
  };
  const usage = (message: string): number => fail(`${message}\nTry 'portsplice docker-proxy --help'.`, 2);

  const [action = 'path', ...rest] = argv;
  if (action === '-h' || action === '--help' || action === 'help') {
    io.stdout.write(`${DOCKER_PROXY_HELP}\n`);
    return 0;
  }
  if (action === 'path') {
    if (rest.length > 0) return usage(`unexpected argument: ${JSON.stringify(rest[0])}`);
    const missing = checkBuilt();
    if (missing) return fail(missing);
    io.stdout.write(`${dockerProxyPath}\n`);
    return 0;
  }
  if (action !== 'install') return usage(`unknown action ${JSON.stringify(action)} (path or install)`);
  if (rest.length > 1) return usage(`unexpected argument: ${JSON.stringify(rest[1])}`);
  if (rest[0] !== undefined && (rest[0] === '' || rest[0].startsWith('-'))) {
    return usage(`DIR must be a directory, got ${JSON.stringify(rest[0])}`);
  }
  const dir = path.resolve(rest[0] ?? DEFAULT_INSTALL_DIR);

  const missing = checkBuilt();
  if (missing) return fail(missing);
  let target: string;
  try {
    target = installCopy(dir);
  } catch (err) {
    return fail(describeFsError(err, dir));
  }
  // The copy must run where it is (a noexec mount, a foreign architecture or libc would
  // only show when dockerd first publishes a port).
  let version: string;
  try {
    version = execFileSync(target, ['-v'], {
      encoding: 'utf8',
      timeout: VERIFY_TIMEOUT_MS,
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  } catch (err) {
    return fail(`installed ${target}, but it does not run: ${errorText(err).split('\n')[0]}`);
  }
  io.stdout.write(
    `installed ${target} (${version})\n` +
      `Add these lines to /etc/docker/daemon.json, then restart dockerd:\n` +
      `  "userland-proxy": true,\n` +
      `  "userland-proxy-path": ${JSON.stringify(target)}\n`,
  );
  return 0;
}
