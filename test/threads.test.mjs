// @test-tag slow: about 20 s
// threads: 'auto', the default: one engine thread while idle, more while the threads are
// busy, never more than the CPUs the process may run on; busy connections handed over to a
// new thread stay byte-exact and the counters stay exact. The drop-in's threads.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

import { createProxy, dockerProxyPath } from '../dist/index.js';
import {
  V4,
  DIST_URL,
  sha256,
  sleep,
  withTimeout,
  startEchoServer,
  exchange,
  freePort,
  closeServers,
  safeClose,
  show,
} from './helpers.mjs';

const HAVE_TASKSET = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
// Small pipes make the engine, not the Node peers, the bottleneck: 4 KiB a splice.
const SMALL_PIPES = 4096;

/** Every child process started here, killed in the final `after` if still running. */
const children = new Set();
after(() => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

/** The engine threads of a process ("portsplice-N"), with their CPU ticks. */
function engineThreads(pid = 'self') {
  const threads = [];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      if (!/^portsplice-\d+$/.test(comm)) continue; // Not the drop-in's main thread, portsplice-dock.
      // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      threads.push({ name: comm, ticks: Number(fields[11]) + Number(fields[12]) });
    } catch {
      /* The thread exited meanwhile. */
    }
  }
  return threads;
}

function spawnNode(code, args = [], { prefix = [] } = {}) {
  const argv = [...prefix, process.execPath, '--input-type=module', '-e', code, ...args];
  const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  children.add(child);
  child.stdout.setEncoding('utf8');
  child.lines = [];
  let buffered = '';
  child.stdout.on('data', (d) => {
    buffered += d;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      child.lines.push(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
      child.emit('line', child.lines.at(-1));
    }
  });
  child.exited = new Promise((resolve) => child.on('exit', resolve));
  return child;
}

/** The child's next line of output not yet taken (lines may arrive several in one chunk). */
function nextLine(child, what, timeout = 10000) {
  child.taken ??= 0;
  if (child.taken < child.lines.length) return Promise.resolve(child.lines[child.taken++]);
  const line = new Promise((resolve) => child.once('line', () => resolve(child.lines[child.taken++])));
  return withTimeout(line, timeout, what, () => child.kill('SIGKILL'));
}

// Echoes every connection back, in its own process so that the test's event loop is not the
// bottleneck. Prints the port.
const ECHO = `
import net from 'node:net';
const server = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

// N streams to argv's port, each sending 1 MiB chunks as fast as it can until a line on stdin,
// then FIN; hashes what it sent and what came back. Prints one JSON line of results.
const LOAD = `
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
const [port, streams] = process.argv.slice(1).map(Number);
let stopping = false;
process.stdin.once('data', () => (stopping = true));
const chunk = randomBytes(1 << 20);
const results = await Promise.all(Array.from({ length: streams }, (_, i) => new Promise((resolve, reject) => {
  const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const sent = createHash('sha256'), got = createHash('sha256');
  let sentBytes = 0, gotBytes = 0, n = 0;
  s.on('data', (d) => { got.update(d); gotBytes += d.length; });
  s.on('end', () => resolve({ sent: sent.digest('hex'), got: got.digest('hex'), sentBytes, gotBytes }));
  s.on('error', reject);
  const pump = () => {
    while (!stopping) {
      // A different chunk each time (its index in front), so that a byte out of place shows.
      const c = Buffer.from(chunk);
      c.writeUInt32BE(n++, (i * 4) % 1024);
      sent.update(c);
      sentBytes += c.length;
      if (!s.write(c)) return s.once('drain', pump);
    }
    s.end();
  };
  s.once('connect', () => { console.log('connected'); pump(); });
})));
console.log(JSON.stringify(results));
process.exit(0); // stdin, still open, would keep the process alive.
`;

/**
 * Runs `streams` bulk connections both ways through `port` until `until()` holds (checked
 * every 50 ms, with `sample()` called each time) or `maxMs` passes, then `extraMs` more.
 * Resolves the per-stream results.
 */
async function bulk(port, streams, { until, sample, maxMs, extraMs, prefix }) {
  const load = spawnNode(LOAD, [String(port), String(streams)], { prefix });
  for (let i = 0; i < streams; i++) await nextLine(load, 'load connected');
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline && !until()) {
    sample();
    await sleep(50);
  }
  const end = Date.now() + extraMs;
  while (Date.now() < end) {
    sample();
    await sleep(50);
  }
  load.stdin.write('stop\n');
  const line = await nextLine(load, 'load results', 60000);
  await load.exited;
  return JSON.parse(line);
}

describe("threads: 'auto'", () => {
  test('is the default; accepted and reported in stats().threads; one engine thread while idle', async (t) => {
    const before = engineThreads().length;
    const proxy = createProxy();
    let echo;
    try {
      assert.equal(proxy.stats().threads, 1);
      assert.equal(engineThreads().length - before, 1, 'one engine thread started');
      echo = await startEchoServer();
      const mapping = await proxy.add({
        proto: 'tcp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: echo.port },
      });
      const payload = Buffer.from('ping\n');
      for (let i = 0; i < 20; i++)
        assert.equal((await exchange(mapping.listen.port, V4, payload)).sha256, sha256(payload));
      await sleep(300);
      assert.equal(proxy.stats().threads, 1, 'light traffic does not add a thread');
      assert.equal(engineThreads().length - before, 1);
    } finally {
      await safeClose(proxy);
      await closeServers(echo);
    }
    await t.test("'auto' explicitly, a number, and the stream engine", async () => {
      const cases = [
        [{ threads: 'auto' }, 1],
        [{ threads: 3 }, 3],
        [{ engine: 'stream' }, 0],
        [{ engine: 'stream', threads: 'auto' }, 0],
      ];
      for (const [options, threads] of cases) {
        const p = createProxy(options);
        try {
          assert.equal(p.stats().threads, threads, show(options));
        } finally {
          await safeClose(p);
        }
      }
      assert.equal(engineThreads().length, before, 'every engine thread has exited');
    });
    await t.test('bad values name the field', () => {
      for (const threads of ['Auto', 'all', '2', '', 0, 65, 1.5, -1, null, true]) {
        assert.throws(() => createProxy({ threads }), /threads must be/, show(threads));
      }
    });
  });

  test('under load: grows, never beyond the CPU limit; busy connections move to the new thread byte-exact; counters stay exact', async (t) => {
    const limit = availableParallelism();
    if (limit < 2) return t.skip(`this process may run on ${limit} CPU: nothing to grow to`);
    const echo = spawnNode(ECHO);
    const proxy = createProxy({ threads: 'auto', pipeSize: SMALL_PIPES });
    t.after(async () => {
      await safeClose(proxy);
      echo.kill();
    });
    const echoPort = Number(await nextLine(echo, 'echo port'));
    const mapping = await proxy.add({
      proto: 'tcp',
      listen: { host: V4, port: 0 },
      target: { host: V4, port: echoPort },
    });
    let most = 1;
    let mostNamed = 1;
    const streams = 4;
    // Every connection is accepted while the engine has one thread; then it must grow.
    const results = await bulk(mapping.listen.port, streams, {
      until: () => most > 1,
      sample: () => {
        most = Math.max(most, proxy.stats().threads);
        mostNamed = Math.max(mostNamed, engineThreads().length);
      },
      maxMs: 30000,
      extraMs: 1500,
    });
    assert.ok(most > 1, `the engine grew under load (stats().threads reached ${most})`);
    assert.ok(most <= limit, `${most} threads, at most the ${limit} CPUs`);
    assert.equal(mostNamed, most, 'stats().threads is the number of engine threads');
    const added = engineThreads().filter((e) => e.name !== 'portsplice-0');
    assert.ok(
      added.some((e) => e.ticks > 2),
      `a thread added after every connection was accepted moved bytes: ${show(added)}`,
    );
    let sent = 0n;
    for (const r of results) {
      assert.ok(r.sentBytes > 0);
      assert.equal(r.gotBytes, r.sentBytes, 'every byte came back');
      assert.equal(r.got, r.sent, 'byte-exact (sha256) both ways');
      sent += BigInt(r.sentBytes);
    }
    let st;
    for (let i = 0; i < 100; i++) {
      st = proxy.stats().mappings[0];
      if (st.connections.active === 0) break;
      await sleep(20);
    }
    assert.deepEqual(
      st.connections,
      {
        accepted: streams,
        active: 0,
        failed: 0,
        failedBy: { refused: 0, timeout: 0, unreachable: 0, other: 0 },
        limitReached: 0,
        idleClosed: 0,
      },
      'connection counters summed over threads',
    );
    assert.equal(st.bytes.toTarget, sent);
    assert.equal(st.bytes.toClient, sent);
    assert.equal(st.bytes.spliced + st.bytes.copied, 2n * sent);
  });

  test(
    'a CPU limit of 1 (taskset -c 0): the same load never adds a thread',
    { skip: !HAVE_TASKSET && 'taskset is not installed' },
    async () => {
      const echo = spawnNode(ECHO);
      // The proxy in its own process, pinned to one CPU; it prints its port, then the most
      // threads it has had whenever asked.
      const PROXY = `
      import { createProxy } from ${JSON.stringify(DIST_URL)};
      const proxy = createProxy({ threads: 'auto', pipeSize: ${SMALL_PIPES} });
      const m = await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: Number(process.argv[1]) } });
      let most = 0;
      setInterval(() => (most = Math.max(most, proxy.stats().threads)), 20);
      console.log(m.listen.port);
      process.stdin.on('data', () => console.log(most));
    `;
      let pinned;
      try {
        const echoPort = Number(await nextLine(echo, 'echo port'));
        pinned = spawnNode(PROXY, [String(echoPort)], { prefix: ['taskset', '-c', '0'] });
        const port = Number(await nextLine(pinned, 'pinned proxy port'));
        let namedMost = 0;
        const results = await bulk(port, 4, {
          until: () => false,
          sample: () => (namedMost = Math.max(namedMost, engineThreads(pinned.pid).length)),
          maxMs: 3000,
          extraMs: 0,
        });
        for (const r of results) assert.equal(r.got, r.sent);
        pinned.stdin.write('?\n');
        assert.equal(Number(await nextLine(pinned, 'most threads')), 1, 'stats().threads stayed 1');
        assert.equal(namedMost, 1, 'one engine thread in /proc/PID/task');
      } finally {
        pinned?.kill();
        echo.kill();
      }
    },
  );
});

describe('the drop-in binary', () => {
  function launch(env, port, targetPort) {
    const args = [
      '-proto',
      'tcp',
      '-host-ip',
      V4,
      '-host-port',
      String(port),
      '-container-ip',
      V4,
      '-container-port',
      String(targetPort),
    ];
    const child = spawn(dockerProxyPath, args, {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    children.add(child);
    let status = '';
    child.stdio[3].setEncoding('utf8').on('data', (d) => (status += d));
    child.stdio[3].on('error', () => {});
    child.status = withTimeout(
      new Promise((resolve) => child.stdio[3].on('close', () => resolve(status))),
      5000,
      'status pipe',
      () => child.kill('SIGKILL'),
    );
    child.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    return child;
  }

  function residentKiB(pid) {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  }

  test('idle: 2 threads (main and one engine thread) and about 1 MB resident; PORTSPLICE_THREADS=N runs N', async (t) => {
    const echo = await startEchoServer();
    t.after(() => closeServers(echo));
    for (const [env, engine] of [
      [{}, 1],
      [{ PORTSPLICE_THREADS: 'auto' }, 1],
      [{ PORTSPLICE_THREADS: '3' }, 3],
    ]) {
      const child = launch(env, await freePort(), echo.port);
      try {
        assert.equal(await child.status, '0\n', show(env));
        const port = Number(/-host-port,(\d+)/.exec(child.spawnargs.join(','))[1]);
        const payload = Buffer.from('ping\n');
        for (let i = 0; i < 10; i++)
          assert.equal((await exchange(port, V4, payload)).sha256, sha256(payload));
        await sleep(300);
        assert.equal(readdirSync(`/proc/${child.pid}/task`).length, 1 + engine, `${show(env)}: threads`);
        assert.equal(engineThreads(child.pid).length, engine);
        if (engine === 1)
          assert.ok(residentKiB(child.pid) < 3 * 1024, `resident ${residentKiB(child.pid)} KiB`);
      } finally {
        child.kill('SIGTERM');
        await withTimeout(child.exited, 5000, 'drop-in exit');
      }
    }
  });

  test('a bad PORTSPLICE_THREADS is refused with a message naming it', async () => {
    for (const value of ['0', '65', 'x', '2x', '']) {
      const child = launch({ PORTSPLICE_THREADS: value }, await freePort(), 9);
      const status = await child.status;
      assert.match(status, /^1\n.*PORTSPLICE_THREADS must be auto or a number from 1 to 64/s, show(value));
      assert.notEqual(await withTimeout(child.exited, 5000, 'drop-in exit'), 0);
    }
  });
});
