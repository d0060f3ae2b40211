// Helpers for the CLI tests: spawning `dist/cli/main.js` as a child process and reading what
// it prints, all bounded by timeouts. Every child is tracked so that `killAll()` (in `after`)
// leaves none behind.
//
// Like helpers.mjs, this module only declares functions: importing it has no side effects.

import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';

import {
  V4,
  canBind,
  withTimeout,
  waitFor,
  startServer,
  closeServers,
  spawnChild,
  killChildren,
} from './helpers.mjs';

export { canBind };

export const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

/**
 * Spawn the CLI with `args`: spawnChild (helpers.mjs) of `node dist/cli/main.js`, with its
 * options (`statusPipe`, `env`, `t`) and its child (`out`, `lines`, `waitLine`, `waitExit`...).
 */
export function spawnCli(args, options) {
  return spawnChild(process.execPath, [CLI, ...args], options);
}

/** Kill every child still running (for `after` hooks) and wait for them, bounded. */
export const killAll = killChildren;

/**
 * Start the CLI and wait until it printed one startup line per mapping; returns the child and
 * the listen ports it reports, in order.
 */
export async function startCli(args, count = 1, opts) {
  const child = spawnCli(args, opts);
  await child.until(
    () => child.lines.filter((l) => l.startsWith('portsplice: mapping ')).length >= count,
    `${count} startup line(s)`,
  );
  const ports = child.lines
    .filter((l) => l.startsWith('portsplice: mapping '))
    .map((l) => Number(/ (?:\S+):(\d+) -> /.exec(l)[1]));
  return { child, ports };
}

/** Stop a child with SIGTERM and wait for it; returns `{ code, signal, ms }`. */
export async function stopCli(child, timeout = 10000) {
  if (child.exitInfo) return child.exitInfo;
  child.kill('SIGTERM');
  return child.waitExit(timeout);
}

/** A free UDP port on `host` (bind :0, read it, close). */
export async function freeUdpPort(host = V4) {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  await new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, host, resolve);
  });
  const { port } = socket.address();
  await new Promise((resolve) => socket.close(resolve));
  return port;
}

/**
 * `count` servers on consecutive ports of 127.0.0.1, built by `make(index)` as an
 * onConnection handler. Returns `{ first, servers, close() }`.
 */
export async function startServerRange(count, make) {
  for (let attempt = 0; attempt < 50; attempt++) {
    // Below net.ipv4.ip_local_port_range (32768-60999 by default): ports there are what the
    // kernel hands out for connect() and port 0, and what proxies on this machine bind as
    // source ports, so one found free there is often taken a moment later.
    const first = 23000 + Math.floor(Math.random() * (27000 - 23000 - count)); // Below freePort()'s.
    const servers = [];
    try {
      for (let i = 0; i < count; i++) servers.push(await startServer(make(i), { port: first + i }));
      return { first, servers, close: () => closeServers(...servers) };
    } catch {
      await closeServers(...servers);
    }
  }
  throw new Error(`no ${count} consecutive free ports found`);
}

/** `count` consecutive ports on 127.0.0.1 nobody listens on (checked, then released). */
export async function freeRange(count) {
  for (let attempt = 0; attempt < 50; attempt++) {
    // Below net.ipv4.ip_local_port_range (32768-60999 by default): ports there are what the
    // kernel hands out for connect() and port 0, and what proxies on this machine bind as
    // source ports, so one found free there is often taken a moment later.
    const first = 23000 + Math.floor(Math.random() * (27000 - 23000 - count)); // Below freePort()'s.
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await canBind(first + i);
    if (ok) return first;
  }
  throw new Error(`no ${count} consecutive free ports found`);
}

/** A UDP echo server on 127.0.0.1; returns `{ port, socket, close() }`. */
export async function startUdpEcho(host = V4) {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('message', (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, host, resolve);
  });
  return {
    port: socket.address().port,
    socket,
    close: () => new Promise((resolve) => socket.close(resolve)),
  };
}

/** Send `payload` to host:port over UDP until a reply comes (retrying, bounded); resolves the reply. */
export async function udpRoundTrip(port, payload, host = V4, timeout = 5000) {
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('error', () => {});
  try {
    const reply = new Promise((resolve) => socket.once('message', (msg) => resolve(msg)));
    const timer = setInterval(() => socket.send(payload, port, host), 200);
    socket.send(payload, port, host);
    try {
      return await withTimeout(reply, timeout, `UDP reply via ${host}:${port}`);
    } finally {
      clearInterval(timer);
    }
  } finally {
    socket.close();
  }
}

/** GET http://host:port/path as text, bounded. */
export async function httpGet(port, path = '/metrics', host = V4) {
  const res = await withTimeout(fetch(`http://${host}:${port}${path}`), 5000, `GET ${path}`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

export { waitFor };
