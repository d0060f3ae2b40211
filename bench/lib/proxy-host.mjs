// The proxy under test for the in-process engines ('splice' and 'stream'): a small Node
// process that runs createProxy() and answers the benchmark over IPC, so that the load
// generators' CPU never counts as the proxy's. It reports process.cpuUsage() (all threads,
// the native engine threads included), resident memory, the proxy's counters, and the
// JavaScript event loop's delay (perf_hooks.monitorEventLoopDelay), which is sampled only
// when asked for, since the 1 ms probe timer itself costs CPU.
//
// Requests: { id, type: 'start', engine, mappings } | { id, type: 'sample', gc }
//           | { id, type: 'eld-start' } | { id, type: 'eld-stop' } | { id, type: 'close' }
import { monitorEventLoopDelay } from 'node:perf_hooks';

/** The probe's period: libuv timers have 1 ms granularity, so this is the finest there is. */
const ELD_RESOLUTION_MS = 1;

let proxy;
let histogram;

function activeConnections() {
  if (!proxy) return 0;
  let active = 0;
  for (const m of proxy.stats().mappings) if (m.proto === 'tcp') active += m.connections.active;
  return active;
}

function eldSummary(h) {
  // The histogram records whole intervals between timer ticks, the 1 ms period included:
  // the delay is what exceeds the period.
  const delayMs = (ns) => Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS);
  return {
    samples: h.count,
    p50Ms: delayMs(h.percentile(50)),
    p99Ms: delayMs(h.percentile(99)),
    p999Ms: delayMs(h.percentile(99.9)),
    maxMs: delayMs(h.max),
    meanMs: delayMs(h.mean),
  };
}

const handlers = {
  async start({ engine, mappings, options }) {
    const { createProxy } = await import('../../dist/index.js');
    proxy = createProxy({ engine, ...options });
    const bound = [];
    for (const m of mappings) bound.push((await proxy.add(m)).listen);
    return { bound };
  },
  sample({ gc }) {
    const cpu = process.cpuUsage();
    // For memory readings: collect first, so that garbage does not count as memory in use.
    if (gc && typeof globalThis.gc === 'function') globalThis.gc();
    return {
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      rssKb: Math.round(process.memoryUsage().rss / 1024),
      active: activeConnections(),
    };
  },
  'eld-start'() {
    histogram?.disable();
    histogram = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    histogram.enable();
    return {};
  },
  'eld-stop'() {
    if (!histogram) return { samples: 0 };
    histogram.disable();
    const summary = eldSummary(histogram);
    histogram = undefined;
    return summary;
  },
  async close() {
    await proxy?.close();
    setImmediate(() => process.exit(0));
    return {};
  },
};

process.on('message', async (message) => {
  const { id, type } = message;
  try {
    const result = await handlers[type](message);
    process.send({ id, ok: true, result });
  } catch (error) {
    process.send({ id, ok: false, error: `${error.code ? `${error.code}: ` : ''}${error.message}` });
  }
});
process.on('disconnect', () => process.exit(0));
process.send({ ready: true });
