// Per-connection cost of `proxyProtocol`: short connections (connect, 1 byte each way, the
// target closes first) through one proxy with two mappings to the same target, one without
// the option and one with it, measured in interleaved slices so that both see the same load.
// node bench/proxy-protocol.mjs [--engine splice|stream] [--version v1|v2] [--slices N]
//   [--slice-ms MS] [--concurrency N]
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createProxy } from '../dist/index.js';

const { values } = parseArgs({
  options: {
    engine: { type: 'string', default: 'splice' },
    version: { type: 'string', default: 'v2' },
    slices: { type: 'string', default: '6' },
    'slice-ms': { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '8' },
  },
});

const target = net.createServer((socket) => {
  socket.on('error', () => {});
  // Reads the header (if any) and the client's byte, answers and closes first, so that
  // TIME_WAIT stays on the target's and the proxy's listening ports, not the client's.
  socket.once('data', () => socket.end('x'));
});
await new Promise((resolve) => target.listen(0, '127.0.0.1', resolve));
const targetPort = target.address().port;

const proxy = createProxy({ engine: values.engine, threads: 1 });
const base = {
  proto: 'tcp',
  listen: { host: '127.0.0.1', port: 0 },
  target: { host: '127.0.0.1', port: targetPort },
};
const off = await proxy.add(base);
const on = await proxy.add({ ...base, proxyProtocol: values.version });

function once(port) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.on('error', reject);
    s.on('connect', () => s.write('y'));
    s.on('data', () => {});
    s.on('end', () => {
      s.end();
      resolve();
    });
  });
}

/** CPU time of the engine threads (portsplice-N), in ns, from schedstat's first field. */
function engineCpuNs() {
  let ns = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      if (!readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').startsWith('portsplice')) continue;
      ns += Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread exited.
    }
  }
  return ns;
}

const cpu = { off: [], on: [] };

async function slice(port, ms, which) {
  const end = performance.now() + ms;
  const cpuBefore = engineCpuNs();
  let done = 0;
  await Promise.all(
    Array.from({ length: Number(values.concurrency) }, async () => {
      while (performance.now() < end) {
        await once(port);
        done++;
      }
    }),
  );
  cpu[which].push((engineCpuNs() - cpuBefore) / done / 1000);
  return done / (ms / 1000);
}

const rates = { off: [], on: [] };
for (let i = 0; i < Number(values.slices); i++) {
  // Alternate which goes first, so that neither always follows the other.
  const order = i % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
  for (const which of order)
    rates[which].push(
      await slice((which === 'off' ? off : on).listen.port, Number(values['slice-ms']), which),
    );
}
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const stats = proxy.stats().mappings;
console.log(
  JSON.stringify({
    engine: values.engine,
    version: values.version,
    offPerSecond: Math.round(median(rates.off)),
    onPerSecond: Math.round(median(rates.on)),
    ratio: +(median(rates.on) / median(rates.off)).toFixed(3),
    // Splice engine only: CPU time of its threads per connection (the stream engine runs on
    // the JavaScript thread, with the clients).
    engineCpuUsPerConnection:
      values.engine === 'splice'
        ? { off: +median(cpu.off).toFixed(2), on: +median(cpu.on).toFixed(2) }
        : undefined,
    slices: { off: rates.off.map(Math.round), on: rates.on.map(Math.round) },
    headersSent: stats.find((m) => m.id === on.id).proxyHeaders.sent,
    failed: stats.map((m) => m.connections.failed),
  }),
);
await proxy.close();
target.close();
