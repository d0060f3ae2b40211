// The forwarding methods compared, and how to start one in a place with the mappings a
// test needs. Every method is either available or skipped with a reason.
//
// An instance exposes endpoint(name) (where the client connects), cpuSeconds() (the proxy's
// CPU so far, null when there is no proxy process), rssKb(), for the in-process engines
// eldStart()/eldStop(), and stop().
import { fork } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import nodePath from 'node:path';
import { fileURLToPath } from 'node:url';
import { onCleanup } from './cleanup.mjs';
import { haproxyCommand, socatCommand } from './peers.mjs';
import {
  inNs,
  openFds,
  processCpuSeconds,
  processPssKb,
  processRssKb,
  processTreeCpuSeconds,
  spawnTracked,
  stop,
  sumOverTree,
  track,
  waitListening,
  which,
} from './sys.mjs';

const ROOT = new URL('../../', import.meta.url);
const HOST_SCRIPT = fileURLToPath(new URL('./proxy-host.mjs', import.meta.url));
export const BINARY = fileURLToPath(new URL('build/Release/portsplice-docker-proxy', ROOT));
const DIST = fileURLToPath(new URL('dist/index.js', ROOT));

// One name per method: `short` is what the tables, the chart and the README call it, and `id`
// is the same name as `--methods` takes it (lower case, a hyphen for the space); `about` only
// describes it, in the reports' list of methods.
export const METHODS = [
  { id: 'direct', about: 'no proxy: the limit', short: 'direct', kind: 'direct' },
  {
    id: 'kernel-nat',
    about: "iptables DNAT, Docker's userland-proxy: false",
    short: 'kernel NAT',
    kind: 'nat',
  },
  {
    id: 'splice',
    portsplice: true,
    about: "the library's splice engine, in a Node process",
    short: 'splice',
    kind: 'engine',
  },
  {
    id: 'drop-in',
    portsplice: true,
    about: 'portsplice-docker-proxy, the native binary',
    short: 'drop-in',
    kind: 'external',
  },
  {
    id: 'stream',
    portsplice: true,
    about: "the library's stream engine, Node streams",
    short: 'stream',
    kind: 'engine',
  },
  { id: 'docker-proxy', about: "Docker's own, run with its flags", short: 'docker-proxy', kind: 'external' },
  {
    id: 'haproxy',
    about: 'mode tcp, splice-auto',
    short: 'HAProxy',
    kind: 'peer',
    noUdp: 'HAProxy forwards no UDP',
  },
  { id: 'socat', about: 'fork per connection', short: 'socat', kind: 'peer' },
];

/** The proxies that run as a process of their own (memory and CPU apply to them). */
export const PROXY_METHODS = ['splice', 'drop-in', 'stream', 'docker-proxy', 'haproxy', 'socat'];

/** The ids of results files written before the names were unified. */
const OLD_IDS = { nat: 'kernel-nat', binary: 'drop-in' };

/** The method named `name` (its id, or an id of an older results file), or undefined. */
export function methodNamed(name) {
  const id = OLD_IDS[name] ?? name;
  return METHODS.find((m) => m.id === id);
}

/** Renames, in place, the method ids of a results file written before the names were unified. */
export function upgradeMethodIds(results) {
  for (const list of [...(results.places ?? []).map((p) => p.methods), results.memory?.methods])
    for (const m of list ?? []) m.id = OLD_IDS[m.id] ?? m.id;
  return results;
}

/** Where Docker's docker-proxy is installed, if it is. */
export function findDockerProxy() {
  for (const candidate of [
    '/usr/sbin/docker-proxy',
    '/usr/bin/docker-proxy',
    '/usr/libexec/docker/docker-proxy',
  ]) {
    if (existsSync(candidate)) return candidate;
  }
  return which('docker-proxy');
}

/**
 * Starts a proxy-host process and returns an IPC client for it; with an engine, starts a
 * proxy with `mappings` in it. Without (engine null), an idle Node process that only
 * measures its event loop: the bystander that shows what the machine's scheduling alone does.
 */
export async function startEngineHost(engine, mappings, ns = null) {
  const stdio = ['ignore', 'ignore', 'pipe', 'ipc'];
  const child = ns
    ? spawnTracked(inNs(ns, [process.execPath, '--expose-gc', HOST_SCRIPT]), { stdio })
    : track(fork(HOST_SCRIPT, [], { execArgv: ['--expose-gc'], stdio }));
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
  const pending = new Map();
  let nextId = 1;
  let ready;
  const readyPromise = new Promise((resolve, reject) => {
    ready = resolve;
    child.once('exit', (code) => reject(new Error(`engine host exited (${code}): ${stderr.trim()}`)));
  });
  child.on('message', (message) => {
    if (message.ready) return ready();
    const waiter = pending.get(message.id);
    if (!waiter) return;
    pending.delete(message.id);
    if (message.ok) waiter.resolve(message.result);
    else waiter.reject(new Error(message.error));
  });
  child.on('exit', (code) => {
    for (const waiter of pending.values())
      waiter.reject(new Error(`engine host exited (${code}): ${stderr}`));
    pending.clear();
  });
  const call = (type, payload = {}, timeoutMs = 30000) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`engine host did not answer "${type}" in ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      child.send({ id, type, ...payload });
    });
  await readyPromise;
  if (!engine) return { child, call, bound: [] };
  const { bound } = await call('start', { engine, mappings });
  return { child, call, bound };
}

/**
 * Starts a docker-proxy compatible binary for one port and protocol and waits for "0\n" on
 * its status pipe (fd 3). Old docker-proxy versions close whatever fd 3 is, so it must be a pipe.
 */
async function startExternal(path, proto, host, port, targetHost, targetPort, ns) {
  const args = ['-proto', proto, '-host-ip', host, '-host-port', String(port)];
  args.push('-container-ip', targetHost, '-container-port', String(targetPort));
  const child = spawnTracked([path, ...args], { ns, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
  child.stderrTail = () => stderr.trim().split('\n').pop() ?? '';
  const status = await new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve(`timed out waiting for the status pipe ${text}`), 5000);
    child.stdio[3].on('data', (d) => (text += d));
    child.stdio[3].on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    child.once('exit', () => setTimeout(() => resolve(text || 'exited'), 50));
  });
  if (!status.startsWith('0')) {
    await stop(child, { signal: 'SIGKILL' });
    throw new Error(`${path} -proto ${proto} failed to start: ${status.trim()} ${stderr.trim()}`);
  }
  return child;
}

/** Why `method` cannot run in `place` (a sentence), or null when it can. */
export function skipReason(method, place, env) {
  switch (method.id) {
    case 'direct':
      return null;
    case 'kernel-nat':
      return place.natSkip;
    case 'splice':
      if (!existsSync(DIST)) return 'dist/ is not built (npm run build:ts)';
      return env.spliceSkip;
    case 'stream':
      return existsSync(DIST) ? null : 'dist/ is not built (npm run build:ts)';
    case 'drop-in':
      return existsSync(BINARY) ? null : `${BINARY} is not built (npm install builds it)`;
    case 'docker-proxy':
      return env.dockerProxy
        ? null
        : 'docker-proxy is not installed (Debian: apt-get install docker.io; the binary runs without a daemon)';
    case 'haproxy':
      return env.tools.haproxy?.path ? null : `haproxy is not installed (${env.tools.haproxy?.install})`;
    case 'socat':
      return env.tools.socat?.path ? null : `socat is not installed (${env.tools.socat?.install})`;
    default:
      return 'unknown method';
  }
}

/** Checks once that the splice engine loads and starts here; returns a skip reason or null. */
export async function probeSplice() {
  if (!existsSync(DIST)) return 'dist/ is not built (npm run build:ts)';
  try {
    const host = await startEngineHost('splice', []);
    await host.call('close');
    return null;
  } catch (error) {
    return `the splice engine does not start here: ${error.message.split('\n')[0]}`;
  }
}

/**
 * Starts `method` in `place` for `services`: [{ name, protos: ['tcp', 'udp'], targetPort }].
 * Each proxy listens on a port of its own per service, TCP and UDP on the same number.
 */
export async function startMethod(method, place, services, env) {
  const endpoints = {};
  const noProxy = {
    cpuSeconds: async () => null,
    rssKb: async () => null,
  };
  if (method.kind === 'direct') {
    for (const s of services) endpoints[s.name] = { host: place.targetHost, port: s.targetPort };
    return { ...noProxy, endpoint: (name) => endpoints[name], stop: async () => {}, pids: [] };
  }
  if (method.kind === 'nat') {
    try {
      for (const s of services) {
        const port = await place.allocPort();
        for (const proto of s.protos) place.natAdd(proto, port, s.targetPort);
        endpoints[s.name] = { host: place.listenHost, port };
      }
    } catch (error) {
      place.natFlush();
      throw error;
    }
    return { ...noProxy, endpoint: (name) => endpoints[name], stop: async () => place.natFlush(), pids: [] };
  }
  if (method.kind === 'engine') {
    const mappings = [];
    for (const s of services) {
      const port = await place.allocPort();
      endpoints[s.name] = { host: place.listenHost, port };
      for (const proto of s.protos) {
        mappings.push({
          proto,
          listen: { host: place.listenHost, port },
          target: { host: place.targetHost, port: s.targetPort },
        });
      }
    }
    const host = await startEngineHost(method.id, mappings, place.hostNs);
    return {
      endpoint: (name) => endpoints[name],
      cpuSeconds: async () => (await host.call('sample')).cpuSeconds,
      rssKb: async () => (await host.call('sample', { gc: true })).rssKb,
      fds: async () => openFds(host.child.pid),
      eldStart: () => host.call('eld-start'),
      eldStop: () => host.call('eld-stop'),
      pids: [host.child.pid],
      stop: async () => {
        await host.call('close', {}, 10000).catch(() => {});
        await stop(host.child, { graceMs: 3000 });
      },
    };
  }
  if (method.kind === 'peer') return startPeer(method, place, services, env, endpoints);
  // external: one process per port and protocol, as dockerd runs them.
  const path = method.id === 'drop-in' ? BINARY : env.dockerProxy;
  const children = [];
  try {
    for (const s of services) {
      const port = await place.allocPort();
      endpoints[s.name] = { host: place.listenHost, port };
      for (const proto of s.protos) {
        children.push(
          await startExternal(
            path,
            proto,
            place.listenHost,
            port,
            place.targetHost,
            s.targetPort,
            place.hostNs,
          ),
        );
      }
    }
  } catch (error) {
    await Promise.all(children.map((c) => stop(c, { signal: 'SIGKILL' })));
    throw error;
  }
  return { endpoint: (name) => endpoints[name], ...processReadings(children, path) };
}

/**
 * CPU, memory and fds of a proxy that runs as `children` (processes of its own), each the sum
 * over the children of a /proc reading per PID (`cpu`, `memory`, `fds`), and how to stop it.
 * A reading of a child that has exited throws with its last words.
 */
function processReadings(
  children,
  name,
  { cpu = processCpuSeconds, memory = processRssKb, fds = openFds } = {},
) {
  const sum = (f) =>
    children.reduce((total, c) => {
      try {
        return total + f(c.pid);
      } catch {
        throw new Error(`${name} (pid ${c.pid}) has exited: ${c.stderrTail()}`);
      }
    }, 0);
  return {
    cpuSeconds: async () => sum(cpu),
    rssKb: async () => sum(memory),
    fds: async () => sum(fds),
    pids: children.map((c) => c.pid),
    stop: async () => {
      await Promise.all(children.map((c) => stop(c, { signal: 'SIGTERM' })));
    },
  };
}

/** Waits until every port listens, or rejects with the child's last words if it exits first. */
async function peerReady(child, ports, ns, name) {
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
  child.stdout?.resume();
  child.stderrTail = () => stderr.trim().split('\n').pop() ?? '';
  const exitedEarly = new Promise((_, reject) =>
    child.once('exit', (code) => {
      // HAProxy prints NOTICE lines before the ALERT that says why.
      const lines = stderr.trim().split('\n');
      const why = lines.filter((l) => /\[ALERT\]| E /.test(l)).join(' ') || lines.pop();
      reject(new Error(`${name} exited (${code}): ${why}`));
    }),
  );
  exitedEarly.catch(() => {});
  for (const { port, proto } of ports) await Promise.race([waitListening(port, { ns, proto }), exitedEarly]);
}

/**
 * HAProxy (one process, a listen section per service) or socat (a process per port and
 * protocol, each forking a child per connection), from bench/lib/peers.mjs.
 */
async function startPeer(method, place, services, env, endpoints) {
  const children = [];
  const ns = place.hostNs;
  const protosOf = (s) => s.protos.filter((p) => p === 'tcp' || !method.noUdp);
  try {
    if (method.id === 'haproxy') {
      const dir = mkdtempSync(nodePath.join(os.tmpdir(), 'psb-haproxy-'));
      const removeDir = onCleanup(() => rmSync(dir, { recursive: true, force: true }), 'remove haproxy dir');
      const listens = [];
      for (const s of services) {
        const port = await place.allocPort();
        endpoints[s.name] = { host: place.listenHost, port };
        listens.push({
          name: s.name,
          host: place.listenHost,
          port,
          targetHost: place.targetHost,
          targetPort: s.targetPort,
        });
      }
      const child = spawnTracked(haproxyCommand(env.tools.haproxy.path, dir, listens), { ns });
      child.once('exit', removeDir);
      children.push(child);
      await peerReady(
        child,
        listens.map((l) => ({ port: l.port, proto: 'tcp' })),
        ns,
        'haproxy',
      );
    } else {
      for (const s of services) {
        const port = await place.allocPort();
        endpoints[s.name] = { host: place.listenHost, port };
        for (const proto of protosOf(s)) {
          const argv = socatCommand(
            env.tools.socat.path,
            proto,
            place.listenHost,
            port,
            place.targetHost,
            s.targetPort,
          );
          const child = spawnTracked(argv, { ns, group: true });
          children.push(child);
          await peerReady(child, [{ port, proto }], ns, 'socat');
        }
      }
    }
  } catch (error) {
    await Promise.all(children.map((c) => stop(c, { signal: 'SIGKILL' })));
    throw error;
  }
  // socat's work happens in its children (HAProxy has none: one process, threads), and they
  // share most of their pages: CPU over the tree, memory as PSS over the tree.
  const tree = method.id === 'socat';
  return {
    endpoint: (name) => endpoints[name],
    ...processReadings(children, method.id, {
      cpu: processTreeCpuSeconds,
      memory: tree ? (pid) => sumOverTree(pid, processPssKb) : processRssKb,
      fds: (pid) => sumOverTree(pid, openFds),
    }),
  };
}
