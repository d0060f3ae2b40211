// Process and system helpers for the benchmark suite: running commands (optionally inside a
// network namespace) with a time limit, background servers that the cleanup kills, CPU and
// memory readings from /proc, free ports, and a description of the machine.
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync } from 'node:fs';
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { onEveryCleanup } from './cleanup.mjs';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

/** The absolute path of an executable on PATH (or in the sbin directories), or null. */
export function which(name) {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/local/sbin', '/usr/sbin', '/sbin']);
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** The argv that runs `argv` inside network namespace `ns` (or as is when ns is falsy). */
export function inNs(ns, argv) {
  return ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv;
}

/** Runs a short administrative command synchronously; throws with its stderr on failure. */
export function sh(argv, { ns, allowFail = false, timeoutMs = 15000, maxBuffer = 1024 * 1024 } = {}) {
  const full = inNs(ns, argv);
  try {
    return execFileSync(full[0], full.slice(1), {
      encoding: 'utf8',
      timeout: timeoutMs,
      maxBuffer,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (error) {
    if (allowFail) return null;
    const stderr = error.stderr ? String(error.stderr).trim() : error.message;
    throw new Error(`${full.join(' ')}: ${stderr}`);
  }
}

/** Children still running; the cleanup kills them. */
const running = new Set();
onEveryCleanup(() => {
  for (const child of running) signal(child, 'SIGKILL');
  running.clear();
}, 'kill child processes');

/** Sends `sig` to a child, or to its whole process group when it was started with `group`. */
function signal(child, sig) {
  try {
    if (child.group) process.kill(-child.pid, sig);
    else child.kill(sig);
  } catch {
    // already gone
  }
}

/**
 * Spawns a child that the cleanup kills if it is still running. `stdio` as for spawn;
 * extra fds (such as docker-proxy's status pipe) go there too. With `group`, the child leads
 * a process group of its own and stopping it signals the group: for a server that forks a
 * process per connection (socat), whose children outlive a killed parent.
 */
export function spawnTracked(argv, { ns, stdio = ['ignore', 'pipe', 'pipe'], env, group = false } = {}) {
  const full = inNs(ns, argv);
  const child = spawn(full[0], full.slice(1), { stdio, env: env ?? process.env, detached: group });
  child.group = group;
  running.add(child);
  child.once('exit', () => {
    running.delete(child);
    // The leader is gone; its forked children (same group) are not.
    if (group) signal(child, 'SIGKILL');
  });
  child.on('error', () => running.delete(child));
  return child;
}

/** Registers a child that was started elsewhere (fork) so that the cleanup kills it. */
export function track(child) {
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

/** Resolves when the child has exited (at once if it already has). */
export function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', resolve));
}

/** Stops a child: SIGTERM (or `signal`), then SIGKILL after `graceMs`. */
export async function stop(child, { signal: sig = 'SIGTERM', graceMs = 2000 } = {}) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  signal(child, sig);
  const timer = setTimeout(() => signal(child, 'SIGKILL'), graceMs);
  await exited(child);
  clearTimeout(timer);
}

/**
 * Runs a command to completion, killing it after `timeoutMs`. Resolves with its exit code,
 * stdout and stderr; never rejects for a non-zero exit (callers decide).
 */
export function run(argv, { ns, timeoutMs = 60000 } = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawnTracked(argv, { ns });
    } catch (error) {
      resolve({ code: -1, stdout: '', stderr: String(error), timedOut: false });
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (error) => (stderr += String(error)));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? -1 : 0), stdout, stderr, timedOut });
    });
  });
}

/** CPU seconds a process has used, from /proc/PID/stat (utime + stime, all its threads). */
export function processCpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

/** The direct children of a single-threaded process (/proc/PID/task/PID/children). */
export function childPids(pid) {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
  return text ? text.split(' ').map(Number) : [];
}

/**
 * CPU seconds of a process that forks a child per connection (socat's fork option): its own
 * utime + stime, the children it has reaped (cutime + cstime), and the live children's.
 * A child reaped while the children are read would count twice (live, then in cutime) or
 * not at all, so the reading is taken again until cutime is the same before and after
 * (bounded; the last reading stands). A child that has exited but is not yet reaped still
 * shows its times in /proc/PID/stat.
 */
export function processTreeCpuSeconds(pid) {
  const stat = (p) => readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ').map(Number);
  let total = 0;
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = stat(pid);
    let children = 0;
    for (const child of childPids(pid)) {
      try {
        const f = stat(child);
        children += f[11] + f[12];
      } catch {
        // exited and reaped meanwhile: cutime changes, and the reading is taken again
      }
    }
    const after = stat(pid);
    total = (after[11] + after[12] + after[13] + after[14] + children) / 100;
    if (before[13] === after[13] && before[14] === after[14]) break;
  }
  return total;
}

/** `f(pid)` summed over a process and its live children (skipping those that exit meanwhile). */
export function sumOverTree(pid, f) {
  let total = f(pid);
  for (const child of childPids(pid)) {
    try {
      const v = f(child);
      if (Number.isFinite(v)) total += v; // a zombie has no VmRSS
    } catch {
      // exited meanwhile
    }
  }
  return total;
}

/**
 * One thread's CPU seconds (/proc/PID/task/TID/stat) and the nanoseconds it spent runnable
 * but waiting for a CPU (second field of /proc/PID/task/TID/schedstat; null without it).
 */
export function threadTimes(pid, tid = pid) {
  const fields = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
  let waitNs = null;
  try {
    waitNs = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
  } catch {
    // no schedstat in this kernel
  }
  return { cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100, waitNs };
}

/** How many file descriptors a process has open. */
export function openFds(pid) {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident set size of a process in kB, from /proc/PID/status. */
export function processRssKb(pid) {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) : NaN;
}

/**
 * Proportional set size of a process in kB (/proc/PID/smaps_rollup): its resident pages with
 * each shared page divided among the processes that map it. For a forking server, whose
 * children share most of their pages, the sum of RSS would count those pages once per child.
 */
export function processPssKb(pid) {
  const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return match ? Number(match[1]) : NaN;
}

/** Busy and total jiffies of the whole machine, from the first line of /proc/stat. */
export function machineJiffies() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = fields[3] + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/** Machine CPU seconds (all cores, all processes) spent busy between two machineJiffies(). */
export function machineCpuSeconds(before, after) {
  return (after.busy - before.busy) / 100;
}

async function tryBind(kind, host, port) {
  if (kind === 'tcp') {
    const server = net.createServer();
    return new Promise((resolve) => {
      server.once('error', () => resolve(0));
      server.listen({ host, port, exclusive: true }, () => {
        const bound = server.address().port;
        server.close(() => resolve(bound));
      });
    });
  }
  const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
  return new Promise((resolve) => {
    socket.once('error', () => resolve(0));
    socket.bind({ address: host, port, exclusive: true }, () => {
      const bound = socket.address().port;
      socket.close(() => resolve(bound));
    });
  });
}

/** A port that is free for TCP and UDP on `host` right now (bounded number of tries). */
export async function freePort(host = '127.0.0.1') {
  for (let i = 0; i < 50; i++) {
    const port = await tryBind('tcp', host, 0);
    if (port && (await tryBind('udp', host, port))) return port;
  }
  throw new Error(`no free TCP+UDP port on ${host}`);
}

/** Waits (at most `timeoutMs`) until something listens on TCP `port` in namespace `ns`. */
export async function waitListening(port, { ns, proto = 'tcp', timeoutMs = 5000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  const flag = proto === 'tcp' ? '-Hltn' : '-Hlun';
  while (Date.now() < deadline) {
    const out = sh(['ss', flag, `sport = :${port}`], { ns, allowFail: true });
    if (out && out.trim()) return;
    await sleep(20);
  }
  throw new Error(`nothing listens on ${proto} port ${port}${ns ? ` in ${ns}` : ''}`);
}

/** nproc, CPU model, kernel, memory, Node version: what the results were taken on. */
export function machineInfo() {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (match) cpuModel = match[1].trim();
  } catch {
    // keep os.cpus()
  }
  return {
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpuModel,
    kernel: os.release(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
