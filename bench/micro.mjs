// Micro-benchmarks of per-operation costs, driven by tinybench, for each in-process engine
// and for a direct connection as the reference:
//   - connect through the proxy, echo 64 bytes, close (a whole short-lived connection);
//   - a 64-byte echo round trip on an open connection;
//   - add() + remove() of a TCP mapping;
//   - a stats() snapshot of a proxy with 16 mappings.
// The echo target runs in a child process; the client, and for the stream engine the proxy,
// share this process's event loop (the splice engine's data path runs on its own thread).
//
//   node bench/micro.mjs [--time 500] [--engines splice,stream] [--json]
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Bench } from 'tinybench';

const { values } = parseArgs({
  options: {
    time: { type: 'string', default: '500' },
    engines: { type: 'string', default: 'splice,stream' },
    json: { type: 'boolean', default: false },
  },
});
const time = Number(values.time);
const PAYLOAD = Buffer.alloc(64, 0x61);

/** The echo target, in a process of its own. */
async function startEcho() {
  const script = fileURLToPath(new URL('./lib/targets.mjs', import.meta.url));
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const child = spawn(process.execPath, [script, 'echo', '127.0.0.1', String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve, reject) => {
    child.stdout.once('data', resolve);
    child.once('exit', (code) => reject(new Error(`echo target exited ${code}`)));
  });
  return { child, port };
}

function connect(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

function echo(socket) {
  return new Promise((resolve, reject) => {
    let got = 0;
    const onData = (d) => {
      got += d.length;
      if (got >= PAYLOAD.length) {
        socket.off('data', onData);
        socket.off('error', reject);
        resolve();
      }
    };
    socket.on('data', onData);
    socket.on('error', reject);
    socket.write(PAYLOAD);
  });
}

async function connectEchoClose(port) {
  const socket = await connect(port);
  await echo(socket);
  socket.destroy();
}

const echoTarget = await startEcho();
const bench = new Bench({ time, warmupTime: Math.min(250, time / 2), throws: true });
const cleanup = [];
const engines = values.engines.split(',').filter(Boolean);
const skipped = {};

let createProxy;
try {
  ({ createProxy } = await import('../dist/index.js'));
} catch (error) {
  for (const engine of engines) skipped[engine] = `dist/index.js does not load: ${error.message}`;
}

const direct = await connect(echoTarget.port);
cleanup.push(() => direct.destroy());
bench.add('direct: connect + 64 B echo + close', () => connectEchoClose(echoTarget.port));
bench.add('direct: 64 B echo round trip', () => echo(direct));

for (const engine of createProxy ? engines : []) {
  let proxy;
  try {
    proxy = createProxy({ engine });
  } catch (error) {
    skipped[engine] = error.message;
    continue;
  }
  cleanup.push(() => proxy.close());
  const mapping = await proxy.add({
    proto: 'tcp',
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: echoTarget.port },
  });
  for (let i = 0; i < 15; i++) {
    await proxy.add({
      proto: 'tcp',
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port: echoTarget.port },
    });
  }
  const open = await connect(mapping.listen.port);
  cleanup.push(() => open.destroy());
  bench.add(`${engine}: connect + 64 B echo + close`, () => connectEchoClose(mapping.listen.port));
  bench.add(`${engine}: 64 B echo round trip`, () => echo(open));
  bench.add(`${engine}: add + remove a TCP mapping`, async () => {
    const m = await proxy.add({
      proto: 'tcp',
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port: echoTarget.port },
    });
    await proxy.remove(m);
  });
  bench.add(`${engine}: stats() snapshot, 16 mappings`, () => {
    proxy.stats();
  });
}

await bench.run();
const tasks = bench.tasks.map((task) => {
  const r = task.result;
  if (!r.latency) return { name: task.name, error: r.error?.message ?? r.state };
  return {
    name: task.name,
    opsPerSec: r.throughput.mean,
    meanUs: r.latency.mean * 1000,
    p50Us: r.latency.p50 * 1000,
    p99Us: r.latency.p99 * 1000,
    rmePct: r.latency.rme,
    samples: r.latency.samplesCount,
  };
});
for (const fn of cleanup.reverse()) await fn();
echoTarget.child.kill();

if (values.json) {
  process.stdout.write(`${JSON.stringify({ tool: 'tinybench', timeMs: time, tasks, skipped })}\n`);
} else {
  console.table(
    tasks.map((t) => ({
      task: t.name,
      'ops/s': Math.round(t.opsPerSec),
      'mean µs': t.meanUs?.toFixed(1),
      'p99 µs': t.p99Us?.toFixed(1),
      samples: t.samples,
    })),
  );
  for (const [engine, reason] of Object.entries(skipped)) console.log(`${engine}: skipped, ${reason}`);
}
process.exit(0);
