// The benchmark plan and its execution: for each place, start the targets and every method
// (proxies, NAT rules), then run each test against each method in turn, in rounds; then the
// memory test and the micro-benchmarks. Every failure is recorded where it happened and the
// run goes on; every method or test that cannot run is recorded as skipped with the reason.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onCleanup } from './cleanup.mjs';
import { METHODS, PROXY_METHODS, skipReason, startEngineHost, startMethod } from './methods.mjs';
import { nginxCommand } from './nginx.mjs';
import {
  freePort,
  machineCpuSeconds,
  machineJiffies,
  run,
  sh,
  sleep,
  spawnTracked,
  stop,
  threadTimes,
  waitListening,
} from './sys.mjs';
import { iperfTcp, iperfUdp, wrkHttp } from './tools.mjs';

const LOADGEN = fileURLToPath(new URL('./loadgen.mjs', import.meta.url));
const TARGETS = fileURLToPath(new URL('./targets.mjs', import.meta.url));
const MICRO = fileURLToPath(new URL('../micro.mjs', import.meta.url));

export const CONFIGS = {
  full: {
    rounds: 3,
    bulkSeconds: 2,
    streams: 4,
    udpSeconds: 2,
    udpLength: 1400,
    eldIdleSeconds: 0.5,
    eldSeconds: 2,
    wrkSeconds: 2,
    wrkConnections: 32,
    latencySeconds: 1.5,
    latencyConcurrency: 1,
    holdCount: 2000,
    microTimeMs: 500,
    ka2Threads: 2,
    ka2Connections: 128,
    churnSeconds: 60,
    churnSliceSeconds: 10,
    churnClients: 16,
  },
  quick: {
    rounds: 1,
    bulkSeconds: 1,
    streams: 0,
    udpSeconds: 1,
    udpLength: 1400,
    eldIdleSeconds: 0.3,
    eldSeconds: 1,
    wrkSeconds: 1,
    wrkConnections: 16,
    latencySeconds: 0.5,
    latencyConcurrency: 1,
    holdCount: 100,
    microTimeMs: 40,
    ka2Threads: 2,
    ka2Connections: 128,
    churnSeconds: 1,
    churnSliceSeconds: 1,
    churnClients: 16,
  },
};

const GB = 1e9;

/** The tests run against every method in every place, in this order. */
export function testPlan(cfg) {
  const tests = [
    {
      id: 'bulk1',
      label: 'bulk TCP ×1',
      tool: 'iperf3',
      estimate: cfg.bulkSeconds + 0.6,
      run: (ctx) => bulk(ctx, 1),
    },
    {
      id: 'bulkN',
      label: `bulk TCP ×${cfg.streams}`,
      tool: 'iperf3',
      estimate: cfg.bulkSeconds + 0.6,
      run: (ctx) => bulk(ctx, cfg.streams),
    },
    { id: 'udp', label: 'UDP flood', tool: 'iperf3', estimate: cfg.udpSeconds + 0.8, run: udp },
    {
      id: 'eld',
      label: 'event loop delay',
      tool: 'iperf3',
      engineOnly: true,
      estimate: cfg.eldIdleSeconds + cfg.eldSeconds + 0.6,
      run: eventLoop,
    },
    {
      id: 'keepalive',
      label: 'HTTP keep-alive',
      tool: 'wrk',
      estimate: cfg.wrkSeconds + 0.3,
      run: keepAlive,
    },
    {
      id: 'keepalive2',
      label: `HTTP keep-alive, ${cfg.ka2Threads} threads ×${cfg.ka2Connections}`,
      tool: 'wrk',
      estimate: cfg.wrkSeconds + 0.3,
      run: (ctx) => keepAlive(ctx, { threads: cfg.ka2Threads, connections: cfg.ka2Connections }),
    },
    {
      id: 'connect',
      label: 'new connections',
      tool: 'wrk',
      estimate: cfg.wrkSeconds + 0.3,
      run: newConnections,
    },
    { id: 'latency', label: 'RTT c=1', tool: 'node', estimate: cfg.latencySeconds + 0.4, run: latency },
    {
      // Long (60 s, whatever --seconds says): the collapse it looks for comes after tens of
      // thousands of connections. Once per method (in the last round) and in the first place
      // only (external, the topology of moby #47537): 8 methods × 60 s is already the
      // longest test of the suite.
      id: 'churn',
      label: `redis churn ${cfg.churnSeconds} s`,
      tool: 'redis-benchmark',
      tools: ['redis-benchmark', 'redis-server', 'redis-cli'],
      once: true,
      firstPlaceOnly: true,
      estimate: cfg.churnSeconds + 1,
      run: churn,
    },
  ];
  return tests.filter((t) => t.id !== 'bulkN' || cfg.streams > 1);
}

/** Runs fn, returning its result with the proxy's and the whole machine's CPU seconds. */
async function withCpu(instance, fn) {
  const cpu0 = await instance.cpuSeconds();
  const machine0 = machineJiffies();
  const result = await fn();
  const machine1 = machineJiffies();
  const cpu1 = await instance.cpuSeconds();
  return {
    ...result,
    proxyCpuS: cpu0 === null ? null : cpu1 - cpu0,
    machineCpuS: machineCpuSeconds(machine0, machine1),
  };
}

const perGB = (cpu, bytes) => (cpu === null ? null : cpu / (bytes / GB));

async function bulk({ place, instance, cfg }, streams) {
  const { host, port } = instance.endpoint('iperf');
  const r = await withCpu(instance, () =>
    iperfTcp({ ns: place.clientNs, host, port, seconds: cfg.bulkSeconds, streams }),
  );
  return { ...r, cpuPerGB: perGB(r.proxyCpuS, r.bytes), machineCpuPerGB: perGB(r.machineCpuS, r.bytes) };
}

async function udp({ place, instance, cfg }) {
  const { host, port } = instance.endpoint('iperf');
  const r = await withCpu(instance, () =>
    iperfUdp({ ns: place.clientNs, host, port, seconds: cfg.udpSeconds, length: cfg.udpLength }),
  );
  const delivered = r.deliveredPps * r.seconds;
  return { ...r, cpuUsPerDatagram: r.proxyCpuS === null ? null : (r.proxyCpuS * 1e6) / delivered };
}

/**
 * The event loop of the engine's Node process, idle and then while iperf3 forwards flat out,
 * with how busy its JavaScript (main) thread was and how long it waited for a CPU. An idle
 * Node process measured at the same time (the bystander) shows the delay that the machine's
 * scheduling alone causes when the load generators and the proxy keep every core busy.
 */
async function eventLoop({ place, instance, cfg }) {
  const { host, port } = instance.endpoint('iperf');
  const pid = instance.pids[0];
  const bystander = await startEngineHost(null, [], place.hostNs);
  try {
    await Promise.all([instance.eldStart(), bystander.call('eld-start')]);
    await sleep(cfg.eldIdleSeconds * 1000);
    const idle = await instance.eldStop();
    const bystanderIdle = await bystander.call('eld-stop');
    await Promise.all([instance.eldStart(), bystander.call('eld-start')]);
    const t0 = threadTimes(pid);
    const wall0 = performance.now();
    let load;
    let loaded;
    let bystanderLoaded;
    try {
      const streams = Math.max(1, cfg.streams);
      load = await iperfTcp({ ns: place.clientNs, host, port, seconds: cfg.eldSeconds, streams });
    } finally {
      loaded = await instance.eldStop();
      bystanderLoaded = await bystander.call('eld-stop');
    }
    const wall = (performance.now() - wall0) / 1000;
    const t1 = threadTimes(pid);
    return {
      idle,
      loaded,
      bystander: { idle: bystanderIdle, loaded: bystanderLoaded },
      jsThreadCpuPct: ((t1.cpuSeconds - t0.cpuSeconds) / wall) * 100,
      jsThreadWaitMsPerS: t0.waitNs === null ? null : (t1.waitNs - t0.waitNs) / 1e6 / wall,
      gbps: load.gbps,
      streams: load.streams,
      resolutionMs: 1,
    };
  } finally {
    await bystander.call('close').catch(() => {});
    await stop(bystander.child);
  }
}

async function keepAlive({ place, instance, cfg }, { threads = 1, connections = cfg.wrkConnections } = {}) {
  const { host, port } = instance.endpoint('http');
  const r = await withCpu(instance, () =>
    wrkHttp({ ns: place.clientNs, host, port, seconds: cfg.wrkSeconds, connections, threads }),
  );
  return {
    ...r,
    cpuUsPerRequest: r.proxyCpuS === null ? null : (r.proxyCpuS * 1e6) / r.requests,
    machineUsPerRequest: (r.machineCpuS * 1e6) / r.requests,
  };
}

async function newConnections({ place, instance, cfg }) {
  const { host, port } = instance.endpoint('http');
  const r = await withCpu(instance, () =>
    wrkHttp({
      ns: place.clientNs,
      host,
      port,
      seconds: cfg.wrkSeconds,
      connections: cfg.wrkConnections,
      close: true,
    }),
  );
  return {
    ...r,
    cps: r.rps,
    cpuUsPerConnection: r.proxyCpuS === null ? null : (r.proxyCpuS * 1e6) / r.requests,
    machineUsPerConnection: (r.machineCpuS * 1e6) / r.requests,
  };
}

/** Connections and commands the redis-server at `port` has counted (INFO stats via redis-cli). */
async function redisCounts(ns, host, port) {
  const out = await run(['redis-cli', '-h', host, '-p', String(port), 'info', 'stats'], {
    ns,
    timeoutMs: 5000,
  });
  const field = (name) => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(out.stdout)?.[1] ?? NaN);
  const counts = { connections: field('total_connections_received'), at: performance.now() };
  if (out.code !== 0 || !Number.isFinite(counts.connections)) {
    throw new Error(`redis-cli info stats failed: ${(out.stderr || out.stdout).trim().slice(-200)}`);
  }
  return counts;
}

/** TIME_WAIT sockets in namespace `ns` toward host:port (ss), or null. */
function timeWaitCount(ns, host, port) {
  // A line per socket, about 100 bytes, and the port range holds up to 32,000 of them.
  const out = sh(['ss', '-Htn', 'state', 'time-wait', 'dst', `${host}:${port}`], {
    ns,
    allowFail: true,
    timeoutMs: 30000,
    maxBuffer: 64 * 1024 * 1024,
  });
  return out === null ? null : out.split('\n').filter((l) => l.trim()).length;
}

/**
 * Connection churn with the client closing first, as in moby #47537: redis-benchmark
 * `-t ping_inline -k 0 -c N` (a new connection for every PING) for cfg.churnSeconds, through
 * the method to a redis-server of the method's own (so that the TIME_WAIT sockets one method
 * leaves toward its target do not count against the next). The rate per slice comes from
 * the target's own count of accepted connections (INFO stats, total_connections_received,
 * minus the INFO connection itself), read every cfg.churnSliceSeconds: connections that got
 * through, not connection attempts. redis-benchmark exits at its first error (a reset, a
 * refused connect); it is then started again (bounded) and the exits are counted.
 */
async function churn({ place, instance, cfg, targets, method }) {
  const { host, port } = instance.endpoint('redis');
  const target = targets.redisFor(method.id);
  const argv = ['redis-benchmark', '-h', host, '-p', String(port), '-t', 'ping_inline', '-k', '0'];
  argv.push('-c', String(cfg.churnClients), '-n', '2000000000', '-q');
  let client = null;
  let clientExits = 0;
  let lastClientError = null;
  let stopping = false;
  const startClient = () => {
    client = spawnTracked(argv, { ns: place.clientNs });
    client.stdout.resume();
    let stderr = '';
    client.stderr.on('data', (d) => (stderr = (stderr + d).slice(-500)));
    client.once('exit', (code) => {
      if (stopping) return;
      clientExits++;
      lastClientError = `exit ${code}: ${stderr.trim().split('\n').pop() ?? ''}`;
      // Started again at once, a bounded number of times; beyond that the slices show zero.
      if (clientExits < 200) setTimeout(() => !stopping && startClient(), 20);
    });
  };
  const slices = [];
  const first = await redisCounts(place.targetNs, target.host, target.port);
  const cpu0 = await instance.cpuSeconds();
  const machine0 = machineJiffies();
  let previous = { ...first, cpu: cpu0 };
  startClient();
  try {
    const sliceCount = Math.max(1, Math.round(cfg.churnSeconds / cfg.churnSliceSeconds));
    for (let i = 1; i <= sliceCount; i++) {
      await sleep(Math.max(0, first.at + i * cfg.churnSliceSeconds * 1000 - performance.now()));
      const counts = await redisCounts(place.targetNs, target.host, target.port);
      const cpu = await instance.cpuSeconds();
      const seconds = (counts.at - previous.at) / 1000;
      const connections = counts.connections - previous.connections - 1; // minus the INFO itself
      slices.push({
        seconds,
        connections,
        cps: connections / seconds,
        proxyCpuS: cpu === null ? null : cpu - previous.cpu,
      });
      previous = { ...counts, cpu };
    }
  } finally {
    stopping = true;
    await stop(client, { signal: 'SIGKILL' });
  }
  const machine1 = machineJiffies();
  const cpu1 = await instance.cpuSeconds();
  const seconds = slices.reduce((a, x) => a + x.seconds, 0);
  const connections = slices.reduce((a, x) => a + x.connections, 0);
  const rates = slices.map((x) => x.cps);
  if (connections <= 0)
    throw new Error(`no connection reached redis (${lastClientError ?? 'no client error'})`);
  const proxyCpuS = cpu0 === null ? null : cpu1 - cpu0;
  const machineCpuS = machineCpuSeconds(machine0, machine1);
  return {
    tool: 'redis-benchmark',
    clients: cfg.churnClients,
    seconds,
    connections,
    cps: connections / seconds,
    firstCps: rates[0],
    lastCps: rates[rates.length - 1],
    minCps: Math.min(...rates),
    slices,
    sliceSeconds: cfg.churnSliceSeconds,
    proxyCpuS,
    machineCpuS,
    cpuUsPerConnection: proxyCpuS === null ? null : (proxyCpuS * 1e6) / connections,
    machineUsPerConnection: (machineCpuS * 1e6) / connections,
    clientExits,
    lastClientError,
    hostTimeWait: timeWaitCount(place.hostNs, target.host, target.port),
  };
}

async function latency({ place, instance, cfg }) {
  const { host, port } = instance.endpoint('http');
  const argv = [process.execPath, LOADGEN, 'latency', host, String(port)];
  argv.push(String(cfg.latencySeconds), String(cfg.latencyConcurrency));
  const out = await run(argv, { ns: place.clientNs, timeoutMs: (cfg.latencySeconds + 20) * 1000 });
  const line = out.stdout.trim().split('\n').pop();
  if (out.code !== 0 || !line) throw new Error(`latency generator failed: ${out.stderr.trim().slice(-300)}`);
  const r = JSON.parse(line);
  if (r.requests === 0) throw new Error(`no request completed (${r.errors} errors)`);
  return { tool: 'node + hdr-histogram-js', ...r };
}

/** The figure of each test whose spread over the rounds the results keep. */
const MAIN_FIGURE = {
  bulk1: (r) => r.gbps,
  bulkN: (r) => r.gbps,
  udp: (r) => r.deliveredPps,
  eld: (r) => r.loaded.p99Ms,
  keepalive: (r) => r.rps,
  keepalive2: (r) => r.rps,
  connect: (r) => r.cps,
  churn: (r) => r.minCps,
  latency: (r) => r.p99Us,
};

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Field by field median of the rounds' results (numbers; nested objects likewise). */
function medianOf(objects) {
  const out = {};
  for (const key of Object.keys(objects[0])) {
    const values = objects.map((o) => o[key]);
    if (values.every((v) => typeof v === 'number' && Number.isFinite(v))) out[key] = median(values);
    else if (values.every((v) => v && typeof v === 'object' && !Array.isArray(v)))
      out[key] = medianOf(values);
    else out[key] = values[0];
  }
  return out;
}

/**
 * The result of a test over its rounds: the median of every figure of the rounds that
 * worked, how many rounds that was, and the main figure of each round (its spread).
 */
function combineRounds(rounds, testId) {
  const good = rounds.filter((r) => !r.error);
  if (good.length === 0) return { error: rounds[rounds.length - 1].error, rounds: rounds.length };
  const combined = medianOf(good);
  combined.rounds = good.length;
  combined.roundFigures = good.map(MAIN_FIGURE[testId]);
  const failed = rounds.filter((r) => r.error);
  if (failed.length) combined.failedRounds = failed.map((r) => r.error);
  return combined;
}

/** One-line outcome of a test, for the progress display. */
export function outcome(testId, r) {
  const f = (x, d = 2) => (x === null || x === undefined ? '–' : x.toFixed(d));
  switch (testId) {
    case 'bulk1':
    case 'bulkN':
      return `${f(r.gbps)} Gbit/s, proxy CPU ${f(r.cpuPerGB)} s/GB`;
    case 'udp':
      return `${Math.round(r.deliveredPps).toLocaleString('en-US')} datagrams/s delivered, ${f(r.lossPct, 1)}% lost`;
    case 'eld':
      return (
        `event loop p99 ${f(r.idle.p99Ms, 3)} ms idle, ${f(r.loaded.p99Ms, 3)} ms at ${f(r.gbps)} Gbit/s ` +
        `(idle bystander ${f(r.bystander.loaded.p99Ms, 3)} ms), JS thread ${f(r.jsThreadCpuPct, 1)}% busy`
      );
    case 'keepalive':
    case 'keepalive2':
      return `${Math.round(r.rps).toLocaleString('en-US')} req/s, p99 ${f(r.p99Ms)} ms${r.errors ? `, ${r.errors} errors` : ''}`;
    case 'connect':
      return `${Math.round(r.cps).toLocaleString('en-US')} conn/s${r.errors ? `, ${r.errors} errors` : ''}`;
    case 'latency':
      return `p50 ${r.p50Us} µs, p99 ${r.p99Us} µs, p99.9 ${r.p999Us} µs`;
    case 'churn':
      return (
        `${r.slices.map((x) => Math.round(x.cps).toLocaleString('en-US')).join(' → ')} conn/s per ` +
        `${r.sliceSeconds} s, proxy CPU ${f(r.proxyCpuS, 1)} s${r.clientExits ? `, client exited ${r.clientExits}× (${r.lastClientError})` : ''}` +
        `${r.hostTimeWait !== null ? `, ${r.hostTimeWait.toLocaleString('en-US')} TIME_WAIT toward the target on the host` : ''}`
      );
    default:
      return 'done';
  }
}

/**
 * The targets of one place: iperf3 server, HTTP server (nginx or Node), echo server, and with
 * `redisMethods` a redis-server for each of those methods (the churn test).
 */
async function startTargets(place, env, httpPortCount, log, redisMethods = []) {
  const host = place.targetHost;
  const ns = place.targetNs;
  const pick = async (fixed) => (place.privateTargets ? fixed : freePort(host));
  const targets = { children: [] };

  targets.iperfPort = await pick(5201);
  targets.startIperf = async () => {
    if (targets.iperf) await stop(targets.iperf, { signal: 'SIGKILL' });
    targets.iperf = spawnTracked(['iperf3', '-s', '-B', host, '-p', String(targets.iperfPort)], { ns });
    targets.iperf.stdout.resume();
    targets.iperf.stderr.resume();
    await waitListening(targets.iperfPort, { ns });
  };
  if (env.tools.iperf3.path) await targets.startIperf();

  targets.httpPorts = [];
  for (let i = 0; i < httpPortCount; i++) targets.httpPorts.push(await pick(8000 + i));
  if (env.tools.nginx.path) {
    targets.nginxDir = mkdtempSync(path.join(os.tmpdir(), 'psb-nginx-'));
    onCleanup(() => rmSync(targets.nginxDir, { recursive: true, force: true }), 'remove nginx dir');
    const argv = nginxCommand(env.tools.nginx.path, targets.nginxDir, host, targets.httpPorts);
    targets.http = spawnTracked(argv, { ns });
  } else {
    targets.http = spawnTracked([process.execPath, TARGETS, 'http', host, targets.httpPorts.join(',')], {
      ns,
    });
  }
  targets.http.stdout.resume();
  let httpErr = '';
  targets.http.stderr.on('data', (d) => (httpErr = (httpErr + d).slice(-1000)));
  for (const port of targets.httpPorts) {
    await waitListening(port, { ns }).catch((error) => {
      throw new Error(`${error.message}: ${httpErr.trim()}`);
    });
  }

  targets.echoPort = await pick(7000);
  targets.echo = spawnTracked([process.execPath, TARGETS, 'echo', host, String(targets.echoPort)], { ns });
  targets.echo.stdout.resume();
  await waitListening(targets.echoPort, { ns });
  // redis-server as the issue's reproduction runs it (no persistence, no protected mode),
  // bound to the target address; one per method, each its own port.
  targets.redis = new Map();
  for (const [i, id] of redisMethods.entries()) {
    const port = await pick(6379 + i);
    const child = spawnTracked(
      [
        ...['redis-server', '--port', String(port), '--bind', host],
        ...['--save', '', '--appendonly', 'no', '--protected-mode', 'no'],
      ],
      { ns },
    );
    child.stdout.resume();
    child.stderr.resume();
    targets.redis.set(id, { host, port, child });
  }
  for (const r of targets.redis.values()) await waitListening(r.port, { ns });
  targets.redisFor = (id) => targets.redis.get(id);
  const redisPorts = [...targets.redis.values()].map((r) => r.port);
  log(
    `  targets in ${ns ?? 'this namespace'}: iperf3 ${host}:${targets.iperfPort}, ` +
      `HTTP (${env.httpTarget}) ${host}:${targets.httpPorts.join(',')}, echo ${host}:${targets.echoPort}` +
      (redisPorts.length ? `, redis-server ${host}:${redisPorts.join(',')}` : ''),
  );
  targets.stop = async () => {
    await Promise.all(
      [targets.iperf, targets.http, targets.echo, ...[...targets.redis.values()].map((r) => r.child)].map(
        (c) => c && stop(c, { signal: 'SIGKILL' }),
      ),
    );
  };
  return targets;
}

/** Resident memory of a proxy idle and with `count` connections open through it. */
async function memoryTest(method, place, targets, cfg, env) {
  const instance = await startMethod(
    method,
    place,
    [{ name: 'echo', protos: ['tcp'], targetPort: targets.echoPort }],
    env,
  );
  try {
    await sleep(300);
    const idleKb = await instance.rssKb();
    const idleFds = await instance.fds();
    const { host, port } = instance.endpoint('echo');
    const holder = spawnTracked(
      [process.execPath, LOADGEN, 'hold', host, String(port), String(cfg.holdCount)],
      {
        ns: place.clientNs,
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    try {
      const line = await new Promise((resolve, reject) => {
        let text = '';
        const timer = setTimeout(() => reject(new Error('connections did not open within 60 s')), 60000);
        holder.stdout.on('data', (d) => {
          text += d;
          if (text.includes('\n')) {
            clearTimeout(timer);
            resolve(text.split('\n')[0]);
          }
        });
        holder.once('exit', (code) => reject(new Error(`hold generator exited ${code}`)));
      });
      const { open, failed } = JSON.parse(line);
      await sleep(500);
      const loadedKb = await instance.rssKb();
      const loadedFds = await instance.fds();
      return {
        count: cfg.holdCount,
        open,
        failed,
        idleKb,
        loadedKb,
        perConnKb: open > 0 ? (loadedKb - idleKb) / open : null,
        idleFds,
        loadedFds,
        fdsPerConn: open > 0 ? (loadedFds - idleFds) / open : null,
      };
    } finally {
      holder.stdin.end();
      await stop(holder, { graceMs: 2000 });
    }
  } finally {
    await instance.stop();
  }
}

/** Runs the micro-benchmarks (tinybench) in a child process. */
async function micro(cfg, engines, ns) {
  const argv = [
    process.execPath,
    MICRO,
    '--json',
    '--time',
    String(cfg.microTimeMs),
    '--engines',
    engines.join(','),
  ];
  const out = await run(argv, { ns, timeoutMs: 180000 });
  const line = out.stdout.trim().split('\n').pop();
  if (out.code !== 0 || !line) throw new Error(`micro-benchmarks failed: ${out.stderr.trim().slice(-400)}`);
  return JSON.parse(line);
}

/**
 * Runs everything. For each place, every method is started at once (each on ports of its
 * own; an idle proxy costs nothing), then each test runs against every method in turn, so
 * that the figures compared with each other are taken within seconds of each other on a
 * machine whose background load changes. `progress` shows it; `results` (the JSON being
 * built) is filled in as steps finish.
 */
export async function runSuite({
  places,
  microNs,
  env,
  cfg,
  methods,
  tests,
  doMemory,
  doMicro,
  progress,
  results,
}) {
  const methodList = METHODS.filter((m) => methods.includes(m.id));
  for (const place of places) {
    const placeResult = { id: place.id, title: place.title, methods: [] };
    results.places.push(placeResult);
    progress.log(place.title);
    // The tests of this place; the churn test needs its tools and one redis-server per method.
    const placeTests = tests.filter((t) => !t.firstPlaceOnly || place === places[0]);
    const missingTool = (test) => (test.tools ?? [test.tool]).find((t) => t !== 'node' && !env.tools[t].path);
    const redisMethods = placeTests.some((t) => t.id === 'churn' && !missingTool(t))
      ? methodList.map((m) => m.id)
      : [];
    let targets;
    try {
      targets = await startTargets(place, env, methodList.length, (t) => progress.log(t), redisMethods);
    } catch (error) {
      placeResult.error = `targets did not start: ${error.message}`;
      progress.log(`  ${placeResult.error}`);
      continue;
    }
    const running = [];
    try {
      for (const [index, method] of methodList.entries()) {
        const entry = { id: method.id, results: {} };
        placeResult.methods.push(entry);
        entry.skipped = skipReason(method, place, env) ?? undefined;
        if (entry.skipped) {
          progress.log(`  ${method.short}: skipped, ${entry.skipped}`);
          continue;
        }
        try {
          const services = [
            { name: 'iperf', protos: ['tcp', 'udp'], targetPort: targets.iperfPort },
            { name: 'http', protos: ['tcp'], targetPort: targets.httpPorts[index] },
          ];
          const redis = targets.redisFor(method.id);
          if (redis) services.push({ name: 'redis', protos: ['tcp'], targetPort: redis.port });
          running.push({ method, entry, instance: await startMethod(method, place, services, env) });
        } catch (error) {
          entry.error = `did not start: ${error.message}`;
          progress.log(`  ${method.short}: ${entry.error}`);
        }
      }
      const runs = new Map(); // "method/test" -> the results of each round
      for (let round = 1; round <= cfg.rounds; round++) {
        for (const test of placeTests) {
          if (test.once && round !== cfg.rounds) continue; // once: in the last round
          for (const method of methodList) {
            if (test.engineOnly && method.kind !== 'engine') continue;
            const roundLabel = cfg.rounds > 1 ? `round ${round}/${cfg.rounds} › ` : '';
            progress.begin(`${roundLabel}${place.id} › ${test.label} › ${method.short}`, test.estimate);
            const entry = placeResult.methods.find((m) => m.id === method.id);
            const live = running.find((r) => r.method === method);
            if (!live) {
              progress.end(entry.skipped ? `skipped: ${entry.skipped}` : 'not run (did not start)');
              continue;
            }
            const missing = missingTool(test);
            if (missing || (test.tool === 'iperf3' && test.id === 'udp' && method.noUdp)) {
              entry.results[test.id] = {
                skipped: missing
                  ? `${missing} is not installed (${env.tools[missing].install})`
                  : method.noUdp,
              };
              progress.end(`skipped: ${entry.results[test.id].skipped}`);
              continue;
            }
            const key = `${method.id}/${test.id}`;
            if (!runs.has(key)) runs.set(key, []);
            try {
              const r = await test.run({ place, instance: live.instance, cfg, method, targets });
              runs.get(key).push(r);
              progress.end(outcome(test.id, r));
            } catch (error) {
              runs.get(key).push({ error: error.message });
              progress.end(`error: ${error.message}`);
              if (test.tool === 'iperf3' && env.tools.iperf3.path) await targets.startIperf().catch(() => {});
            }
            entry.results[test.id] = combineRounds(runs.get(key), test.id);
          }
        }
      }
      for (const r of running.splice(0)) await r.instance.stop();
      if (doMemory && place === places[places.length - 1]) {
        results.memory = { place: place.id, count: cfg.holdCount, methods: [] };
        for (const method of methodList.filter((m) => PROXY_METHODS.includes(m.id))) {
          progress.begin(
            `${place.id} › memory, ${cfg.holdCount} connections › ${method.short}`,
            2 + cfg.holdCount / 500,
          );
          const reason = skipReason(method, place, env);
          if (reason) {
            results.memory.methods.push({ id: method.id, skipped: reason });
            progress.end(`skipped: ${reason}`);
            continue;
          }
          try {
            const r = await memoryTest(method, place, targets, cfg, env);
            results.memory.methods.push({ id: method.id, ...r });
            progress.end(
              `idle ${r.idleKb} kB, ${r.perConnKb?.toFixed(2)} kB and ${r.fdsPerConn?.toFixed(1)} fds per ` +
                `connection (${r.open} open)`,
            );
          } catch (error) {
            results.memory.methods.push({ id: method.id, error: error.message });
            progress.end(`error: ${error.message}`);
          }
        }
      }
    } finally {
      for (const r of running) await r.instance.stop().catch(() => {});
      await targets.stop();
    }
  }
  if (doMicro) {
    const engines = ['splice', 'stream'].filter((e) => methods.includes(e));
    progress.begin(
      'micro-benchmarks (tinybench)',
      (engines.length * 4 + 2) * (cfg.microTimeMs / 1000 + 0.3) + 1,
    );
    try {
      results.micro = await micro(cfg, engines, microNs);
      if (env.spliceSkip) results.micro.skipped.splice = env.spliceSkip;
      progress.end(`${results.micro.tasks.length} tasks`);
    } catch (error) {
      results.micro = { error: error.message };
      progress.end(`error: ${error.message}`);
    }
  }
}

/** The version of an installed Debian package, or null. */
export function debianVersion(pkg) {
  const out = spawnSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8' });
  return out.status === 0 && out.stdout ? out.stdout.trim() : null;
}
