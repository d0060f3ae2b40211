// Shared helpers for the portsplice integration tests.
//
// Note: `node --test test/` treats every .mjs file under test/ as a test file, so this module
// must not have side effects when it is run on its own (it only declares functions).

import { spawn } from 'node:child_process';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

/** The engines every test file runs its cases against. */
export const ENGINES = ['splice', 'stream'];

export const V4 = '127.0.0.1';
export const V6 = '::1';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** URL of the compiled library, usable from workers and child processes. */
export const DIST_URL = new URL('../dist/index.js', import.meta.url).href;

export function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

export function randomPayload(size) {
  return size === 0 ? Buffer.alloc(0) : randomBytes(size);
}

/**
 * Resolve/reject like `promise`, but reject with a descriptive error after `ms` milliseconds.
 * `onTimeout` (optional) runs when the deadline passes (e.g. to destroy sockets).
 */
export function withTimeout(promise, ms, what, onTimeout) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => {
      try {
        onTimeout?.();
      } catch {
        /* ignore */
      }
      reject(new Error(`timed out after ${ms} ms: ${what}`));
    }, ms);
  });
  return Promise.race([Promise.resolve(promise), deadline]).finally(() => clearTimeout(timer));
}

/**
 * Poll `fn` until it returns a truthy value (which is returned). Bounded: after `timeout` ms
 * throws, describing `what` and the last value seen (`describe(last)` if given).
 */
export async function waitFor(fn, { timeout = 5000, interval = 10, what = 'condition', describe } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) {
      let extra = '';
      try {
        extra = describe ? `; last: ${describe()}` : '';
      } catch {
        /* ignore */
      }
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${extra}`);
    }
    await sleep(interval);
  }
}

/** JSON.stringify that copes with bigints (for assertion messages). */
export function show(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v));
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/**
 * Start a TCP server on `host`:0. `onConnection(socket, index)` is called for every connection.
 * Every socket gets an error listener (errors are recorded in `errors`), so a reset never
 * becomes an uncaught exception. `close()` destroys all sockets and is bounded.
 */
export async function startServer(
  onConnection,
  { host = V4, port: wantPort = 0, allowHalfOpen = true } = {},
) {
  const sockets = new Set();
  const errors = [];
  let count = 0;
  const server = net.createServer({ allowHalfOpen }, (socket) => {
    sockets.add(socket);
    socket.errors = [];
    socket.on('error', (err) => {
      socket.errors.push(err);
      errors.push(err);
    });
    socket.on('close', () => sockets.delete(socket));
    onConnection(socket, count++);
  });
  server.on('error', (err) => errors.push(err));
  await withTimeout(
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port: wantPort, backlog: 4096 }, () => {
        server.off('error', reject);
        resolve();
      });
    }),
    5000,
    `listen on ${host}`,
  );
  const { port } = server.address();
  return {
    server,
    host,
    port,
    sockets,
    errors,
    get connectionCount() {
      return count;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await withTimeout(
        new Promise((resolve) => server.close(() => resolve())),
        5000,
        `close server ${host}:${port}`,
      ).catch(() => {});
    },
  };
}

/** A server that echoes everything it receives and forwards the FIN after the last byte. */
export function startEchoServer(opts) {
  return startServer((socket) => socket.pipe(socket), opts);
}

/**
 * Echo servers on 127.0.0.1 and ::1 sharing one port (so that a name like `localhost` reaches an
 * echo server whichever address it resolves to). Returns { port, v4, v6, close() }.
 */
export async function startDualEchoServer() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const v4 = await startEchoServer({ host: V4 });
    try {
      const v6 = await startEchoServer({ host: V6, port: v4.port });
      return { port: v4.port, v4, v6, close: () => closeServers(v4, v6) };
    } catch {
      await v4.close();
    }
  }
  throw new Error('could not find a port free on both 127.0.0.1 and ::1');
}

/**
 * A server that, on every connection, concurrently sends its own `payload` (then FIN) and hashes
 * what it receives. `results` gets `{ sha256, bytes }` for each connection whose client sent FIN.
 */
export async function startStreamServer(payload, opts) {
  const results = [];
  const srv = await startServer((socket) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    socket.on('end', () => results.push({ sha256: hash.digest('hex'), bytes }));
    socket.end(payload);
  }, opts);
  srv.results = results;
  return srv;
}

/** True if nothing listens on host:port (TCP), checked by binding it. */
export async function canBind(port, host = V4) {
  const server = net.createServer();
  const ok = await new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => resolve(true));
  });
  if (ok) await new Promise((resolve) => server.close(resolve));
  return ok;
}

/** Find a port on `host` nobody listens on (bind :0, read the port, close). */
export async function freePort(host = V4) {
  // Below net.ipv4.ip_local_port_range (32768-60999 by default): a port there that the
  // kernel hands out for port 0 is free only for a moment, since the kernel hands it out
  // again (to the proxy's own next listener) and proxies bind odd ports there as source
  // ports toward their targets. 27000-32767 is this helper's; closedPort() and the CLI
  // tests' freeRange() pick from below it.
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 27000 + Math.floor(Math.random() * (32768 - 27000));
    if (await canBind(port, host)) return port;
  }
  throw new Error(`no free TCP port on ${host} in 27000-32767 after 100 tries`);
}

/**
 * A port on 127.0.0.1 that refuses connections, below the ephemeral range: a port freed by
 * freePort() can be handed out again to the next listen on port 0, the proxy's own listener
 * included, which then forwards to itself.
 */
export async function closedPort() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 3000);
    const refused = await new Promise((resolve) => {
      const socket = net.connect({ port, host: V4 });
      socket.on('connect', () => {
        socket.destroy();
        resolve(false);
      });
      socket.on('error', (error) => resolve(error.code === 'ECONNREFUSED'));
    });
    if (refused) return port;
  }
  throw new Error('no refusing port in 20000-22999 in 50 tries');
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/**
 * Connect to host:port. Resolves with the connected socket (which has a permanent error
 * listener recording into `socket.errors`), rejects with the connect error. Bounded.
 */
export function connect(port, host = V4, { timeout = 5000, allowHalfOpen = true } = {}) {
  const socket = net.connect({ port, host, allowHalfOpen });
  socket.errors = [];
  socket.on('error', (err) => socket.errors.push(err));
  return withTimeout(
    new Promise((resolve, reject) => {
      const onError = (err) => {
        socket.off('connect', onConnect);
        reject(err);
      };
      const onConnect = () => {
        socket.off('error', onError);
        resolve(socket);
      };
      socket.once('error', onError);
      socket.once('connect', onConnect);
    }),
    timeout,
    `connect to ${host}:${port}`,
    () => socket.destroy(),
  );
}

/** Expect host:port to refuse connections (ECONNREFUSED). Bounded. */
export async function expectRefused(port, host = V4, what = `${host}:${port}`) {
  let socket;
  try {
    socket = await connect(port, host, { timeout: 3000 });
  } catch (err) {
    if (err.code === 'ECONNREFUSED') return;
    throw new Error(`${what}: expected ECONNREFUSED, got ${err.code ?? err.message}`);
  }
  socket.destroy();
  throw new Error(`${what}: expected ECONNREFUSED, but the connection was accepted`);
}

/**
 * Expect host:port to start refusing within `withinMs`. For a listener an engine thread
 * closes after the call that asked for it returned: a connect sent in between is still
 * accepted (or lands in the backlog and is reset), so this retries until one is refused.
 */
export async function expectRefusedSoon(port, host = V4, what = `${host}:${port}`, withinMs = 1000) {
  const deadline = Date.now() + withinMs;
  for (let attempt = 1; ; attempt++) {
    try {
      await expectRefused(port, host, what);
      return attempt;
    } catch (error) {
      if (Date.now() >= deadline) throw new Error(`${error.message} (still, ${withinMs} ms on)`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Resolve `{ error, ms }` when `socket` emits 'close' (error is the first socket error, if any).
 * Bounded by `timeout`.
 */
export function waitClose(socket, timeout = 2000, what = 'socket close') {
  const start = Date.now();
  if (socket.closed || socket.destroyed) {
    return Promise.resolve({ error: socket.errors?.[0], ms: 0 });
  }
  return withTimeout(
    new Promise((resolve) => {
      socket.once('close', () => resolve({ error: socket.errors?.[0], ms: Date.now() - start }));
    }),
    timeout,
    what,
  );
}

/** Resolve with the first 'error' the socket emits (its code is checked by the caller). Bounded. */
export function waitError(socket, timeout = 5000, what = 'socket error') {
  if (socket.errors?.length) return Promise.resolve(socket.errors[0]);
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('error', resolve);
      socket.once('close', () => {
        // 'error' is always emitted before 'close'; if we get here there was none.
        setImmediate(() =>
          socket.errors?.length
            ? resolve(socket.errors[0])
            : reject(new Error(`${what}: the socket closed without an error (clean FIN instead of a reset)`)),
        );
      });
    }),
    timeout,
    what,
    () => socket.destroy(),
  );
}

/**
 * Hash everything `socket` receives until 'end'. Resolves `{ sha256, bytes, data? }`
 * (`data` only when `keep` is true). Rejects on socket error. Not bounded by itself.
 */
export function collect(socket, { keep = false } = {}) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const chunks = [];
    let bytes = 0;
    socket.on('data', (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (keep) chunks.push(chunk);
    });
    socket.once('end', () =>
      resolve({ sha256: hash.digest('hex'), bytes, data: keep ? Buffer.concat(chunks) : undefined }),
    );
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`socket closed before 'end' after ${bytes} bytes`)));
  });
}

/**
 * Connect, send `payload` and FIN, and receive until the peer's FIN, both directions concurrently.
 * Resolves `{ sha256, bytes, data? }` of what was received, after the socket closed. Bounded.
 */
export async function exchange(port, host, payload, { timeout = 10000, keep = false } = {}) {
  const socket = await connect(port, host, { timeout });
  try {
    const received = collect(socket, { keep });
    socket.end(payload);
    const result = await withTimeout(
      received,
      timeout,
      `exchange of ${payload.length} bytes via ${host}:${port}`,
    );
    await waitClose(socket, timeout, 'close after exchange');
    return result;
  } finally {
    socket.destroy();
  }
}

/** Open `n` connections at once; resolves with the connected sockets (all destroyed on failure). */
export async function openConnections(n, port, host = V4, { timeout = 10000 } = {}) {
  const pending = [];
  for (let i = 0; i < n; i++) pending.push(connect(port, host, { timeout }));
  const settled = await Promise.allSettled(pending);
  const failed = settled.filter((s) => s.status === 'rejected');
  if (failed.length) {
    for (const s of settled) if (s.status === 'fulfilled') s.value.destroy();
    throw new Error(
      `${failed.length}/${n} connections to ${host}:${port} failed; first: ${failed[0].reason?.message}`,
    );
  }
  return settled.map((s) => s.value);
}

/**
 * Resolve when the peer has closed the connection in any way: 'end' (FIN), 'error' (e.g. reset)
 * or 'close'. Resolves `{ how, error }`. Bounded.
 */
export function waitPeerClosed(socket, timeout = 2000, what = 'peer close') {
  if (socket.errors?.length) return Promise.resolve({ how: 'error', error: socket.errors[0] });
  if (socket.readableEnded) return Promise.resolve({ how: 'end' });
  if (socket.closed || socket.destroyed) return Promise.resolve({ how: 'close' });
  socket.resume();
  return withTimeout(
    new Promise((resolve) => {
      socket.once('end', () => resolve({ how: 'end' }));
      socket.once('error', (error) => resolve({ how: 'error', error }));
      socket.once('close', () => resolve({ how: 'close', error: socket.errors?.[0] }));
    }),
    timeout,
    what,
  );
}

/** Send `payload` on an open socket and wait for exactly `payload.length` echoed bytes back. */
export function pingEcho(socket, payload = Buffer.from('ping\n'), timeout = 5000) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const chunks = [];
      let got = 0;
      const onData = (chunk) => {
        chunks.push(chunk);
        got += chunk.length;
        if (got >= payload.length) {
          cleanup();
          resolve(Buffer.concat(chunks));
        }
      };
      const onError = (err) => {
        cleanup();
        reject(err);
      };
      const onClose = () => {
        cleanup();
        reject(new Error(`closed after ${got}/${payload.length} echoed bytes`));
      };
      const cleanup = () => {
        socket.off('data', onData);
        socket.off('error', onError);
        socket.off('close', onClose);
      };
      socket.on('data', onData);
      socket.once('error', onError);
      socket.once('close', onClose);
      socket.write(payload);
    }),
    timeout,
    'echo round trip',
  );
}

// ---------------------------------------------------------------------------------------------
// Proxy helpers
// ---------------------------------------------------------------------------------------------

/** Options for a tcp mapping from listenHost:0 to targetHost:targetPort. */
export function mappingOptions(
  targetPort,
  { listenHost = V4, targetHost = V4, listenPort = 0, ...rest } = {},
) {
  return {
    proto: 'tcp',
    listen: { host: listenHost, port: listenPort },
    target: { host: targetHost, port: targetPort },
    ...rest,
  };
}

/** Add a mapping, bounded. */
export function addMapping(proxy, targetPort, opts) {
  return withTimeout(proxy.add(mappingOptions(targetPort, opts)), 5000, 'proxy.add');
}

/** The stats entry of `mapping` (by id), or undefined. */
export function statsOf(proxy, mapping) {
  const id = typeof mapping === 'number' ? mapping : mapping.id;
  return proxy.stats().mappings.find((m) => m.id === id);
}

/**
 * Poll the stats of `mapping` until `pred(stats)` holds; returns those stats. Bounded.
 */
export function waitStats(proxy, mapping, pred, what, timeout = 5000) {
  let last;
  return waitFor(
    () => {
      last = statsOf(proxy, mapping);
      return last && pred(last) ? last : null;
    },
    { timeout, what, describe: () => show(last) },
  );
}

/** Poll until the mapping has no active connection; returns its stats. Bounded. */
export function waitIdle(proxy, mapping, timeout = 5000) {
  return waitStats(proxy, mapping, (s) => s.connections.active === 0, 'connections.active === 0', timeout);
}

/** Remove a mapping, bounded, ignoring errors (for cleanup in finally blocks). */
export async function safeRemove(proxy, mapping) {
  if (!proxy || !mapping) return;
  await withTimeout(proxy.remove(mapping), 5000, 'proxy.remove').catch(() => {});
}

/** Close a proxy, bounded, ignoring errors (for cleanup in after hooks). */
export async function safeClose(proxy) {
  if (!proxy) return;
  await withTimeout(proxy.close(), 10000, 'proxy.close').catch(() => {});
}

/** Close test servers, bounded, ignoring errors. */
export async function closeServers(...servers) {
  await Promise.all(servers.filter(Boolean).map((s) => s.close().catch(() => {})));
}

/** Assert the byte-counter invariants for an engine. */
export function checkByteInvariants(assert, engine, st) {
  const { toTarget, toClient, spliced, copied } = st.bytes;
  for (const [k, v] of Object.entries(st.bytes)) assert.equal(typeof v, 'bigint', `bytes.${k} is a bigint`);
  assert.equal(
    spliced + copied,
    toTarget + toClient,
    `spliced + copied === toTarget + toClient (${show(st.bytes)})`,
  );
  if (engine === 'stream') assert.equal(spliced, 0n, 'stream engine never splices');
}

// ---------------------------------------------------------------------------------------------
// Child processes: one spawner for every test (the CLI, the drop-in, scripts, namespaces)
// ---------------------------------------------------------------------------------------------

const children = new Set();

/**
 * Spawn `command args`, tracked for `killChildren()`. With `ulimitFds`, it runs under
 * `sh -c 'ulimit -n N; exec ...'` (soft and hard limit, so that Node cannot raise it back).
 * With `statusPipe`, fd 3 is a pipe whose text collects in `child.status`.
 * `statusDone` resolves that text once the child closes fd 3 (docker-proxy does right after
 * writing it). The child has `out`, `err`, `lines` (complete stdout lines),
 * `until(check, what, timeout)`, `waitLine(pred, [what,] timeout)` (a RegExp resolves its
 * match, a function the first line it accepts), `exited` and `waitExit(timeout)` resolving
 * `{ code, signal }`, `waitClosed(timeout)` (the same, once its pipes are read too).
 * With `t` (a test context), `t.after()` SIGKILLs it if it still runs and waits for it.
 */
export function spawnChild(command, args, { ulimitFds, statusPipe = false, stdin = false, env, t } = {}) {
  let file = command;
  let argv = args;
  if (ulimitFds !== undefined) {
    file = 'sh';
    argv = ['-c', 'ulimit -n "$0" && exec "$@"', String(ulimitFds), command, ...args];
  }
  const stdio = [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', ...(statusPipe ? ['pipe'] : [])];
  const child = spawn(file, argv, { stdio, env: { ...process.env, ...env } });
  children.add(child);
  child.out = '';
  child.err = '';
  child.status = '';
  child.lines = [];
  const listeners = new Set();
  const notify = () => {
    for (const fn of [...listeners]) fn();
  };
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (text) => {
    child.out += text;
    partial += text;
    const parts = partial.split('\n');
    partial = parts.pop();
    child.lines.push(...parts);
    notify();
  });
  child.stderr.setEncoding('utf8').on('data', (text) => {
    child.err += text;
    notify();
  });
  child.stdin?.on('error', () => {});
  if (statusPipe) {
    child.stdio[3].setEncoding('utf8');
    child.stdio[3].on('data', (text) => {
      child.status += text;
      notify();
    });
    child.stdio[3].on('error', () => {});
  }
  child.statusDone = statusPipe
    ? new Promise((resolve) => child.stdio[3].once('close', () => resolve(child.status)))
    : Promise.resolve('');
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      child.exitInfo = { code, signal };
      children.delete(child);
      notify();
      resolve(child.exitInfo);
    });
  });
  // 'exit' can come before the last output has been read: 'close' comes after it.
  child.closed = new Promise((resolve) => child.once('close', () => resolve(child.exitInfo)));
  child.on('error', (err) => {
    child.err += `spawn error: ${err.message}`;
  });
  child.describe = () =>
    `${command} exit ${JSON.stringify(child.exitInfo)}; stdout: ${JSON.stringify(child.out.slice(-2000))}; ` +
    `stderr: ${JSON.stringify(child.err.slice(-2000))}`;
  child.until = (check, what, timeout = 10000) =>
    withTimeout(
      new Promise((resolve, reject) => {
        const fn = () => {
          const value = check();
          if (value) {
            listeners.delete(fn);
            resolve(value);
          } else if (child.exitInfo) {
            listeners.delete(fn);
            reject(new Error(`the child exited before ${what}; ${child.describe()}`));
          }
        };
        listeners.add(fn);
        fn();
      }),
      timeout,
      `${what}; ${child.describe()}`,
    );
  child.waitLine = (pred, what, timeout) => {
    if (typeof what === 'number' || what === undefined) [what, timeout] = [`matching ${pred}`, what];
    return child.until(
      () => {
        for (const line of child.lines) {
          if (typeof pred === 'function') {
            if (pred(line)) return line;
            continue;
          }
          const m = pred.exec(line);
          if (m) return m;
        }
        return null;
      },
      `a line ${what}`,
      timeout,
    );
  };
  child.waitExit = (timeout = 10000) =>
    withTimeout(child.exited, timeout, `the child to exit; ${child.describe()}`, () => child.kill('SIGKILL'));
  /** Like waitExit, but also waits until everything it wrote to its pipes has been read. */
  child.waitClosed = (timeout = 10000) =>
    withTimeout(child.closed, timeout, `the child to exit and close its pipes; ${child.describe()}`, () =>
      child.kill('SIGKILL'),
    );
  child.alive = () => child.exitInfo === undefined;
  t?.after(() => stopChild(child));
  return child;
}

/** SIGKILL `child` if it still runs and wait for it (bounded); for cleanup. */
export async function stopChild(child) {
  if (!child.alive()) return;
  child.kill('SIGKILL');
  await withTimeout(child.exited, 5000, 'a killed child to exit').catch(() => {});
}

/** Run a Node ES module given as text in a child process (see spawnChild for the options). */
export function spawnNode(script, args = [], options) {
  return spawnChild(process.execPath, ['--input-type=module', '-e', script, ...args], options);
}

/** SIGKILL every child still running and wait for them (bounded). For `after` hooks. */
export async function killChildren() {
  await Promise.all([...children].map((child) => stopChild(child)));
}
