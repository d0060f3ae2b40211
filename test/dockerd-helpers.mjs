// A real dockerd (Debian's docker.io 20.10) for the end-to-end test and bench/docker-ports.mjs,
// started so that it touches nothing of the machine, and torn down on every exit path.
//
// Where everything lives (TAG is `psd-<pid of this process>`):
// - network: a namespace TAG that this module creates (only `lo` up); dockerd creates docker0,
//   its veths and its iptables rules in there; --bip and --default-address-pool are inside
//   198.18.0.0/15; proxies listen in there and clients run in there (nsenter --net);
// - files: a mkdtemp directory /tmp/TAG-XXXXXX: --data-root, --exec-root, --pidfile, the API
//   socket, daemon.json, the trust key ("deprecated-key-path": dockerd 20.10 otherwise writes
//   /etc/docker/key.json), the docker CLI's config (DOCKER_CONFIG, else it writes ~/.docker);
// - /run: dockerd runs in a private mount namespace (unshare --mount) with a tmpfs on /run,
//   because containerd 1.6 puts every shim's socket in /run/containerd/s/ whatever its --state
//   says, and dockerd creates /run/docker; its bind mounts (data root, container netns files)
//   stay in that namespace too. (`ip netns exec` is not used to start it: it remounts /sys,
//   which hides /sys/fs/cgroup, and dockerd then finds no cgroups.)
// - containerd: dockerd 20.10 starts its own, with state and root under --exec-root and
//   --data-root, unless /run/containerd/containerd.sock exists (then it would use the
//   machine's: the tmpfs on /run hides that one too);
// - cgroups: --cgroup-parent TAG, so the containers' cgroups are TAG/<id> below dockerd's own
//   cgroup in each hierarchy (dockerd would otherwise leave /sys/fs/cgroup/*/docker behind);
//   removed at the end.
//
// Cleanup is synchronous so that it also runs from `exit` and signal handlers: remove the
// containers, SIGTERM dockerd (SIGKILL after a bound), SIGKILL whatever is left that is ours
// by identity (a process in our network namespace, with our directory in its command line,
// or in our cgroup: never by name), unmount what is mounted under the directory, remove the
// cgroups, the namespace and the directory.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  rmSync,
  statSync,
  symlinkSync,
  copyFileSync,
  writeFileSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

import { which } from '../bench/lib/sys.mjs';

export { which };

export const TAG = `psd-${process.pid}`;
export const IMAGE = 'psd-busybox:1';
/** Inside 198.18.0.0/15, the range the project's namespaces may use. */
export const BRIDGE_IP = '198.18.50.1/24';
export const ADDRESS_POOL = 'base=198.18.64.0/18,size=24';

const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** docker.io's own CLI (same version as its dockerd) when installed, else the first on PATH. */
function dockerCli() {
  if (process.env.PORTSPLICE_DOCKER_CLI) return process.env.PORTSPLICE_DOCKER_CLI;
  return existsSync('/usr/bin/docker') ? '/usr/bin/docker' : which('docker');
}

/** True when `file` is an ELF executable without a program interpreter (statically linked). */
function isStaticElf(file) {
  const b = readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false; // ELF64 only
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false; // PT_INTERP
  return true;
}

const BUSYBOX = '/bin/busybox';

/** Why a real dockerd cannot run here (a sentence), or null when it can. */
export function dockerdSkipReason() {
  if (process.platform !== 'linux') return 'dockerd runs on Linux only';
  if (process.getuid?.() !== 0) return 'needs root (dockerd, network namespaces)';
  for (const tool of ['dockerd', 'containerd', 'containerd-shim-runc-v2', 'runc']) {
    if (!which(tool)) return `${tool} is not installed (apt-get install docker.io)`;
  }
  if (!dockerCli()) return 'the docker CLI is not installed (apt-get install docker.io)';
  for (const tool of ['ip', 'ss', 'nsenter', 'unshare', 'tar', 'mount', 'umount']) {
    if (!which(tool)) return `${tool} is not installed (iproute2, util-linux, tar)`;
  }
  if (!which('iptables')) return 'iptables is not installed (dockerd needs it)';
  if (!existsSync(BUSYBOX) || !isStaticElf(BUSYBOX)) {
    return `no statically linked ${BUSYBOX} for the test image (apt-get install busybox-static)`;
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  if (!/ - cgroup2? /.test(mounts)) return 'no cgroup file system is mounted (dockerd needs one)';
  const probe = `${TAG}-probe`;
  const added = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (added.status !== 0) return `cannot create a network namespace: ${added.stderr.trim()}`;
  spawnSync('ip', ['netns', 'del', probe]);
  return null;
}

/** Every process: [{ pid, ppid, argv, netns, cgroup, exe }], skipping those gone meanwhile. */
export function processes() {
  const list = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const dir = `/proc/${name}`;
      const argv = readFileSync(`${dir}/cmdline`, 'utf8').split('\0').slice(0, -1);
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`${dir}/status`, 'utf8'))[1]);
      let exe = null;
      try {
        exe = readlinkSync(`${dir}/exe`);
      } catch {
        // kernel thread
      }
      list.push({
        pid: Number(name),
        ppid,
        argv,
        exe,
        netns: readlinkSync(`${dir}/ns/net`),
        cgroup: readFileSync(`${dir}/cgroup`, 'utf8'),
      });
    } catch {
      // exited while we looked
    }
  }
  return list;
}

const alive = (pid) => {
  try {
    // A zombie still answers kill(0); count it as gone.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
};

function waitGoneSync(pids, ms) {
  const deadline = Date.now() + ms;
  while (pids.some(alive) && Date.now() < deadline) sleepSync(20);
  return !pids.some(alive);
}

function killQuietly(pid, signal) {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

// The in-namespace client: one node process per exchange, started with nsenter --net. Modes:
// tcp (stdin is sent, then a FIN; everything received goes to stdout), udp (stdin is split into
// datagrams of `size` bytes, each sent and its echo awaited), hold (connect, print "ready",
// then report how the connection ended), listen (listen until stdin closes).
const CLIENT = String.raw`
import net from 'node:net';
import dgram from 'node:dgram';
const spec = JSON.parse(process.argv[1]);
const fail = (why) => { process.stderr.write(String(why) + '\n'); process.exit(1); };
setTimeout(() => fail('client timed out'), spec.timeoutMs ?? 10000).unref();
const readStdin = async () => { const parts = []; for await (const c of process.stdin) parts.push(c); return Buffer.concat(parts); };
if (spec.mode === 'tcp') {
  const payload = await readStdin();
  const parts = [];
  const s = net.connect(spec.port, spec.host, () => s.end(payload));
  s.on('data', (d) => parts.push(d));
  s.on('end', () => process.stdout.write(Buffer.concat(parts)));
  s.on('error', fail);
} else if (spec.mode === 'udp') {
  const payload = await readStdin();
  const s = dgram.createSocket(net.isIPv6(spec.host) ? 'udp6' : 'udp4');
  s.on('error', fail);
  const out = [];
  for (let off = 0; off < payload.length; off += spec.size) {
    const datagram = payload.subarray(off, off + spec.size);
    const reply = await new Promise((resolve) => { s.once('message', resolve); s.send(datagram, spec.port, spec.host); });
    out.push(reply);
  }
  s.close();
  process.stdout.write(Buffer.concat(out));
} else if (spec.mode === 'hold') {
  const s = net.connect(spec.port, spec.host, () => process.stdout.write('ready\n'));
  s.on('end', () => { process.stdout.write('ended: fin\n'); s.destroy(); });
  s.on('error', (e) => { process.stdout.write('ended: ' + e.code + '\n'); });
  s.on('close', () => process.exit(0));
} else if (spec.mode === 'listen') {
  const server = net.createServer();
  server.on('error', fail);
  server.listen({ port: spec.port, host: spec.host }, () => process.stdout.write('ready\n'));
  process.stdin.on('end', () => process.exit(0)).resume();
} else fail('unknown mode ' + spec.mode);
`;

// A UDP echo server, run in a container's network namespace (busybox's nc has no -u here).
const UDP_ECHO = String.raw`
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('ready\n'));
`;

/** Collects a child's stdout; resolves { code, signal, stdout: Buffer, stderr } when it exits. */
function collect(child, timeoutMs, what) {
  const out = [];
  let stderr = '';
  child.stdout?.on('data', (d) => out.push(d));
  child.stderr?.on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${what}: no exit after ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out), stderr });
    });
  });
}

/** Resolves when `child` prints `line` on stdout (bounded); the rest of stdout keeps flowing. */
function waitLine(child, line, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`${what}: no "${line}" in ${timeoutMs} ms`)), timeoutMs);
    const onData = (d) => {
      text += d;
      if (text.split('\n').includes(line)) {
        clearTimeout(timer);
        child.stdout.off('data', onData);
        resolve(text);
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', () => {
      clearTimeout(timer);
      reject(new Error(`${what}: exited before "${line}"`));
    });
  });
}

const live = new Set();
let handlersInstalled = false;

function installHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const all = () => {
    for (const daemon of live) daemon.cleanup();
  };
  process.on('exit', all);
  for (const [signal, number] of [
    ['SIGINT', 2],
    ['SIGTERM', 15],
    ['SIGHUP', 1],
  ]) {
    process.on(signal, () => {
      process.stderr.write(`\n${TAG}: ${signal}, stopping dockerd and removing its namespace\n`);
      all();
      process.exit(128 + number);
    });
  }
}

export class Dockerd {
  /**
   * @param {object} options
   * @param {string} options.proxyPath the userland proxy (made absolute: dockerd needs that)
   * @param {string} [options.label] distinguishes several daemons of one process
   */
  constructor({ proxyPath, label = 'd' }) {
    this.proxyPath = path.resolve(proxyPath);
    this.ns = `${TAG}-${label}`;
    this.cgroupParent = `${TAG}-${label}`;
    this.child = null;
    this.cleaned = false;
    this.helpers = new Set();
    this.cli = dockerCli();
  }

  /** Creates the namespace and directory, starts dockerd and imports the test image. */
  async start() {
    installHandlers();
    Dockerd.sweepStale();
    live.add(this);
    this.dir = mkdtempSync(`/tmp/${this.ns}-`);
    this.sock = path.join(this.dir, 'docker.sock');
    this.log = path.join(this.dir, 'dockerd.log');
    mkdirSync(path.join(this.dir, 'cli'));
    writeFileSync(
      path.join(this.dir, 'daemon.json'),
      JSON.stringify(
        {
          'userland-proxy': true,
          'userland-proxy-path': this.proxyPath,
          'deprecated-key-path': path.join(this.dir, 'key.json'),
        },
        null,
        2,
      ),
    );
    execFileSync('ip', ['netns', 'add', this.ns]);
    this.nsCreated = true;
    execFileSync('ip', ['-n', this.ns, 'link', 'set', 'lo', 'up']);
    this.netns = `net:[${statSync(`/run/netns/${this.ns}`).ino}]`;
    await this.startDaemon();
    await this.buildImage();
    return this;
  }

  /** The argv that runs `argv` in the daemon's network namespace (and nothing else changed). */
  inNs(argv) {
    return ['nsenter', `--net=/run/netns/${this.ns}`, '--', ...argv];
  }

  async startDaemon() {
    const args = [
      '--config-file',
      path.join(this.dir, 'daemon.json'),
      '--data-root',
      path.join(this.dir, 'data'),
      '--exec-root',
      path.join(this.dir, 'exec'),
      '--pidfile',
      path.join(this.dir, 'docker.pid'),
      '-H',
      `unix://${this.sock}`,
      '--bip',
      BRIDGE_IP,
      '--default-address-pool',
      ADDRESS_POOL,
      '--cgroup-parent',
      this.cgroupParent,
      // vfs: no overlay mounts, and it works on any file system /tmp is on; the image is 2 MB.
      '--storage-driver',
      'vfs',
      '--shutdown-timeout',
      '5',
    ];
    const argv = this.inNs([
      'unshare',
      '--mount',
      '--propagation',
      'private',
      '--',
      'sh',
      '-c',
      'mount -t tmpfs -o mode=0755,size=64m psd-run /run && exec "$@"',
      'sh',
      'dockerd',
      ...args,
    ]);
    const logFd = openSync(this.log, 'a');
    // nsenter, unshare and sh each exec the next: the child's PID is dockerd's. Its own process
    // group (detached), so that a Ctrl-C reaches only this process, whose handler then removes
    // the containers before it stops dockerd; dockerd would otherwise start its own shutdown at
    // the same moment and wait for the containers' stop timeouts.
    this.child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', logFd, logFd], detached: true });
    closeSync(logFd);
    const child = this.child;
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    child.exitedPromise = exited;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      const r = await this.docker(['version', '--format', '{{.Server.Version}}'], { allowFail: true });
      if (r.code === 0) {
        this.serverVersion = r.stdout.trim();
        return;
      }
      await sleep(100);
    }
    throw new Error(`dockerd did not come up; its log ends:\n${this.logTail()}`);
  }

  logTail(lines = 30) {
    try {
      return readFileSync(this.log, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  get pid() {
    return this.child?.pid;
  }

  /** Runs the docker CLI against this daemon: { code, stdout, stderr } (rejects on a time-out). */
  async docker(args, { allowFail = false, timeoutMs = 30000, input } = {}) {
    const child = spawn(this.cli, ['-H', `unix://${this.sock}`, ...args], {
      stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, DOCKER_CONFIG: path.join(this.dir, 'cli') },
    });
    if (input) child.stdin.end(input);
    const r = await collect(child, timeoutMs, `docker ${args.join(' ')}`);
    const result = { code: r.code, stdout: r.stdout.toString(), stderr: r.stderr };
    if (!allowFail && r.code !== 0) {
      throw new Error(`docker ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    }
    return result;
  }

  /** A rootfs with a static busybox, a few of its applets and a random file for httpd. */
  async buildImage() {
    const root = path.join(this.dir, 'rootfs');
    mkdirSync(path.join(root, 'bin'), { recursive: true });
    mkdirSync(path.join(root, 'www'));
    copyFileSync(BUSYBOX, path.join(root, 'bin/busybox'));
    for (const applet of ['sh', 'nc', 'httpd', 'cat', 'sleep'])
      symlinkSync('busybox', path.join(root, 'bin', applet));
    this.blob = randomBytes(256 * 1024);
    writeFileSync(path.join(root, 'www/blob.bin'), this.blob);
    const tar = path.join(this.dir, 'rootfs.tar');
    execFileSync('tar', ['-C', root, '-cf', tar, '.']);
    await this.docker(['import', tar, IMAGE]);
  }

  /** `docker run -d ...`; resolves the container id. */
  async run(args) {
    const r = await this.docker(['run', '-d', ...args]);
    return r.stdout.trim();
  }

  /** The PID (in our PID namespace) of a container's first process. */
  async containerPid(id) {
    return Number((await this.docker(['inspect', '-f', '{{.State.Pid}}', id])).stdout.trim());
  }

  /** Starts a UDP echo server on `port` in a container's network namespace; resolves when ready. */
  async udpEchoIn(id, port) {
    const pid = await this.containerPid(id);
    const child = spawn(
      'nsenter',
      [
        `--target=${pid}`,
        '--net',
        '--',
        process.execPath,
        '--input-type=module',
        '-e',
        UDP_ECHO,
        String(port),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.track(child);
    await waitLine(child, 'ready', 10000, 'udp echo in the container');
    return child;
  }

  track(child) {
    this.helpers.add(child);
    child.once('exit', () => this.helpers.delete(child));
    return child;
  }

  /** Runs one client exchange in the namespace (see CLIENT); resolves { code, stdout, stderr }. */
  client(spec, input = Buffer.alloc(0), timeoutMs = 15000) {
    const argv = this.inNs([
      process.execPath,
      '--input-type=module',
      '-e',
      CLIENT,
      JSON.stringify({ timeoutMs, ...spec }),
    ]);
    const child = this.track(spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] }));
    child.stdin.on('error', () => {});
    child.stdin.end(input);
    return collect(child, timeoutMs + 5000, `client ${JSON.stringify(spec)}`);
  }

  /** Starts a long-running client (hold, listen) and resolves it once it printed "ready". */
  async clientProcess(spec, timeoutMs = 60000) {
    const argv = this.inNs([
      process.execPath,
      '--input-type=module',
      '-e',
      CLIENT,
      JSON.stringify({ timeoutMs, ...spec }),
    ]);
    const child = this.track(spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] }));
    child.stdin.on('error', () => {});
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.output = () => stdout;
    await waitLine(child, 'ready', 10000, `client ${JSON.stringify(spec)}`);
    return child;
  }

  /**
   * The userland proxies running in this daemon's namespace, whoever their parent is now:
   * [{ pid, ppid, exe, argv, proto, hostIp, hostPort, containerIp, containerPort }].
   */
  proxies() {
    const flag = (argv, name) => {
      const i = argv.indexOf(`-${name}`);
      return i >= 0 ? argv[i + 1] : undefined;
    };
    return processes()
      .filter((p) => p.netns === this.netns && p.argv.includes('-container-ip'))
      .map((p) => ({
        ...p,
        proto: flag(p.argv, 'proto'),
        hostIp: flag(p.argv, 'host-ip'),
        hostPort: Number(flag(p.argv, 'host-port')),
        containerIp: flag(p.argv, 'container-ip'),
        containerPort: Number(flag(p.argv, 'container-port')),
      }));
  }

  /** Listening TCP and bound UDP sockets in the namespace: ['tcp 0.0.0.0:8080', ...]. */
  listeners() {
    return this.ss(['-Hltun'])
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const f = line.trim().split(/\s+/);
        return `${f[0]} ${f[4]}`;
      });
  }

  /** TCP sockets in TIME_WAIT whose local port is `port`, in the namespace (ss lines). */
  timeWait(port) {
    return this.ss(['-Htan', 'state', 'time-wait', `sport = :${port}`])
      .split('\n')
      .filter(Boolean);
  }

  /** Runs ss with `args` in the namespace; resolves its output. */
  ss(args) {
    const argv = this.inNs(['ss', ...args]);
    return execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  }

  /** Stops dockerd with `signal` (SIGTERM: a clean shutdown) and waits for it, bounded. */
  async stopDaemon(signal = 'SIGTERM', timeoutMs = 20000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    // Its containerd (started with a parent-death signal) must be gone too before a restart:
    // a new dockerd that finds the old containerd's PID still alive (dying, or a zombie not yet
    // reaped) adopts it and then times out waiting for it ("containerd is still running").
    // Orphans are reaped by PID 1, which on this project's machines does so only every second
    // or two: wait until the PID is gone, not just dead.
    const containerd = processes()
      .filter((p) => p.ppid === child.pid && p.argv.some((a) => a.includes(this.dir)))
      .map((p) => p.pid);
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const result = await child.exitedPromise;
    clearTimeout(timer);
    const deadline = Date.now() + 10000;
    while (containerd.some((pid) => existsSync(`/proc/${pid}`)) && Date.now() < deadline) await sleep(20);
    return result;
  }

  /** Stops dockerd (SIGTERM, or SIGKILL for an unclean death) and starts it again. */
  async restart(signal = 'SIGTERM') {
    await this.stopDaemon(signal);
    await this.startDaemon();
  }

  /**
   * What a run that was killed (SIGKILL: no handler ran) left behind: namespaces psd-<pid>-*
   * whose <pid> no longer exists, with their directory, processes and cgroups.
   */
  static sweepStale() {
    const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((line) => line.split(' ')[0])
      .filter((name) => /^psd-\d+-[a-z0-9]+$/.test(name));
    for (const name of names) {
      const pid = Number(name.split('-')[1]);
      if (pid === process.pid || existsSync(`/proc/${pid}`)) continue;
      const stale = new Dockerd({ proxyPath: '/', label: 'stale' });
      stale.ns = name;
      stale.cgroupParent = name;
      stale.nsCreated = true;
      const dir = readdirSync('/tmp').find((entry) => entry.startsWith(`${name}-`));
      if (dir) stale.dir = path.join('/tmp', dir);
      try {
        stale.netns = `net:[${statSync(`/run/netns/${name}`).ino}]`;
      } catch {
        // the namespace file is gone already
      }
      process.stderr.write(`${TAG}: removing ${name}, left by a killed run\n`);
      stale.cleanup();
    }
  }

  /** Our processes: in our network namespace, with our directory in argv, or in our cgroup. */
  ours() {
    const cg = `/${this.cgroupParent}/`;
    return processes().filter(
      (p) =>
        p.pid !== process.pid &&
        (p.netns === this.netns ||
          (this.dir && p.argv.some((a) => a.includes(this.dir))) ||
          p.cgroup.includes(cg)),
    );
  }

  /** Stops and removes everything this daemon made; synchronous, idempotent, never throws. */
  cleanup() {
    if (this.cleaned) return;
    this.cleaned = true;
    live.delete(this);
    const step = (label, fn) => {
      try {
        fn();
      } catch (error) {
        process.stderr.write(`${this.ns}: cleanup: ${label}: ${error.message}\n`);
      }
    };
    const child = this.child;
    const daemonUp = child && child.exitCode === null && child.signalCode === null && alive(child.pid);
    if (daemonUp && this.dir) {
      step('remove containers', () => {
        const env = { ...process.env, DOCKER_CONFIG: path.join(this.dir, 'cli') };
        const host = ['-H', `unix://${this.sock}`];
        const ids = spawnSync(this.cli, [...host, 'ps', '-aq'], { encoding: 'utf8', env, timeout: 10000 });
        const list = (ids.stdout ?? '').split('\n').filter(Boolean);
        if (list.length) spawnSync(this.cli, [...host, 'rm', '-f', ...list], { env, timeout: 30000 });
      });
      step('stop dockerd', () => {
        killQuietly(child.pid, 'SIGTERM');
        if (!waitGoneSync([child.pid], 15000)) killQuietly(child.pid, 'SIGKILL');
      });
    }
    for (const helper of this.helpers) killQuietly(helper.pid, 'SIGKILL');
    if (this.netns) {
      step('kill leftovers', () => {
        // A few rounds: a shim can start a process while we kill its siblings.
        for (let round = 0; round < 5; round++) {
          const left = this.ours().map((p) => p.pid);
          if (left.length === 0) break;
          for (const pid of left) killQuietly(pid, 'SIGKILL');
          waitGoneSync(left, 5000);
        }
      });
    }
    if (this.dir) {
      step('unmount', () => {
        const points = readFileSync('/proc/self/mountinfo', 'utf8')
          .split('\n')
          .map((line) => line.split(' ')[4])
          .filter((p) => p && (p === this.dir || p.startsWith(`${this.dir}/`)))
          .sort((a, b) => b.length - a.length);
        for (const point of points) spawnSync('umount', ['-l', point]);
      });
    }
    step('remove cgroups', () => removeCgroups(this.cgroupParent));
    if (this.nsCreated)
      step('delete namespace', () => execFileSync('ip', ['netns', 'del', this.ns], { stdio: 'ignore' }));
    if (this.dir) step('remove directory', () => rmSync(this.dir, { recursive: true, force: true }));
  }
}

/**
 * Removes the cgroup `parent` and the container cgroups below it from every hierarchy. runc
 * takes a relative --cgroup-parent from the cgroup that dockerd (and so this process) is in:
 * /sys/fs/cgroup/<hierarchy>/<our cgroup there>/<parent>, which is the root for most
 * hierarchies here but not for memory (/process_api/<id> on this project's machines).
 */
function removeCgroups(parent) {
  const roots = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => / - cgroup2? /.test(line))
    .map((line) => line.split(' ')[4]);
  const own = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(':').slice(2).join(':'));
  const tops = new Set(roots.flatMap((root) => ['/', ...own].map((base) => path.join(root, base, parent))));
  for (const top of tops) {
    if (!existsSync(top)) continue;
    const remove = (dir) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        if (entry.isDirectory()) remove(path.join(dir, entry.name));
      }
      // A cgroup directory is removed with rmdir (its files are virtual); bounded retries
      // while the last task of a killed container is still being reaped.
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(dir);
          return;
        } catch (error) {
          if (error.code !== 'EBUSY') throw error;
          sleepSync(20);
        }
      }
    };
    remove(top);
  }
}

/** Starts a daemon (see Dockerd); cleans up and rethrows when it cannot be started. */
export async function startDockerd(options) {
  const daemon = new Dockerd(options);
  try {
    return await daemon.start();
  } catch (error) {
    daemon.cleanup();
    throw error;
  }
}

/** Resident and proportional set size of a process in kB (/proc/PID/smaps_rollup). */
export function memoryKb(pid) {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)[1]);
  return { rss: field('Rss'), pss: field('Pss') };
}
