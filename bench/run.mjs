// The benchmark suite: direct, kernel NAT, the splice engine, the native drop-in binary, the
// stream engine, docker-proxy, HAProxy and socat, side by side in one run. See "## Benchmark
// suite" in README.md.
//
//   npm run bench                    the whole suite (about 21 minutes on 2 cores)
//   npm run bench -- --quick         a smoke test in about 1.5 minutes: loopback only, short runs
//   node bench/run.mjs --help        the options
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cleanupAll, installCleanupHandlers } from './lib/cleanup.mjs';
import {
  findDockerProxy,
  METHODS,
  methodNamed,
  PROXY_METHODS,
  probeSplice,
  upgradeMethodIds,
} from './lib/methods.mjs';
import { Progress } from './lib/progress.mjs';
import { analyse, chartSpec, markdown, renderSvg, targetsTable } from './lib/report.mjs';
import { CONFIGS, debianVersion, runSuite, testPlan } from './lib/suite.mjs';
import { isRoot, machineInfo, sh } from './lib/sys.mjs';
import { findTools } from './lib/tools.mjs';
import { dockerTopology, loopbackOnly, netnsSkipReason, removeStale } from './lib/topology.mjs';

const HELP = `Usage: node bench/run.mjs [options]   (npm run bench -- [options])

  --quick            short runs, loopback only, every method once (about 1.5 minutes)
  --loopback-only    do not build network namespaces even as root
  --methods LIST     comma-separated subset of: ${METHODS.map((m) => m.id).join(',')}
  --tests LIST       comma-separated subset of:
                     bulk1,bulkN,udp,eld,keepalive,keepalive2,connect,latency,churn,memory,micro
  --seconds N        length of each load run but the churn test's (default 2, or 1 with --quick)
  --churn-seconds N  length of the churn test per method (default 60, or 1 with --quick), in
                     slices of 10 s (1 s with --quick or below 20 s)
  --rounds N         rounds of every test; figures are medians (default 3, or 1 with --quick)
  --report FILE      only rewrite FILE's .md and .svg from FILE (a results .json); runs nothing
  --out PREFIX       write PREFIX.json, PREFIX.md, PREFIX.svg
                     (default bench/results/latest, or bench/results/quick with --quick)
  -h, --help         this text

As root, everything runs in network namespaces of its own (client, host, container behind a
bridge; --quick: one namespace), deleted on every exit path: the machine's own network,
firewall rules and sysctls are not touched. Without root: loopback in the current namespace,
no kernel NAT. Results: JSON, Markdown, SVG chart.`;

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    'loopback-only': { type: 'boolean', default: false },
    methods: { type: 'string' },
    tests: { type: 'string' },
    out: { type: 'string' },
    seconds: { type: 'string' },
    'churn-seconds': { type: 'string' },
    rounds: { type: 'string' },
    report: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(HELP);
  process.exit(0);
}

/** Writes PREFIX.md and PREFIX.svg from the results (and their analysis). */
async function writeReport(prefix, results) {
  const analysis = analyse(results);
  results.analysis = analysis;
  writeFileSync(`${prefix}.md`, markdown(results, analysis));
  writeFileSync(`${prefix}.svg`, await renderSvg(chartSpec(results, analysis)));
  return analysis;
}

if (values.report) {
  const prefix = values.report.replace(/\.json$/, '');
  const results = upgradeMethodIds(JSON.parse(readFileSync(`${prefix}.json`, 'utf8')));
  await writeReport(prefix, results);
  writeFileSync(`${prefix}.json`, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`rewrote ${prefix}.md, ${prefix}.svg (and the analysis in ${prefix}.json)`);
  process.exit(0);
}

installCleanupHandlers();
const mode = values.quick ? 'quick' : 'full';
const cfg = { ...CONFIGS[mode] };
if (values.seconds) {
  const seconds = Number(values.seconds);
  if (!(seconds > 0 && seconds <= 600)) throw new Error('--seconds wants a number of seconds up to 600');
  Object.assign(cfg, { bulkSeconds: seconds, udpSeconds: seconds, wrkSeconds: seconds, eldSeconds: seconds });
  cfg.latencySeconds = Math.max(0.5, seconds * 0.75);
}
if (values['churn-seconds']) {
  const seconds = Number(values['churn-seconds']);
  if (!(Number.isInteger(seconds) && seconds >= 1 && seconds <= 600))
    throw new Error('--churn-seconds wants a whole number of seconds up to 600');
  cfg.churnSeconds = seconds;
  cfg.churnSliceSeconds = seconds >= 20 ? 10 : 1;
}
if (values.rounds) {
  cfg.rounds = Number(values.rounds);
  if (!(Number.isInteger(cfg.rounds) && cfg.rounds >= 1 && cfg.rounds <= 20))
    throw new Error('--rounds wants 1 to 20');
}
const here = path.dirname(fileURLToPath(import.meta.url));
const outPrefix = values.out ?? path.join(here, 'results', mode === 'quick' ? 'quick' : 'latest');
const log = (text) => process.stderr.write(`${text}\n`);

const methods = values.methods
  ? [
      ...new Set(
        values.methods.split(',').map((name) => {
          const method = methodNamed(name.trim());
          if (!method)
            throw new Error(`unknown method "${name}" (the methods: ${METHODS.map((m) => m.id).join(', ')})`);
          return method.id;
        }),
      ),
    ]
  : METHODS.map((m) => m.id);
const allTests = testPlan(cfg);
const testIds = values.tests ? values.tests.split(',') : [...allTests.map((t) => t.id), 'memory', 'micro'];
for (const t of testIds) {
  if (![...allTests.map((x) => x.id), 'bulkN', 'memory', 'micro'].includes(t))
    throw new Error(`unknown test "${t}"`);
}
const tests = allTests.filter((t) => testIds.includes(t.id));

// ---- What is installed ----------------------------------------------------------------

function version(argv, pattern) {
  const out = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 5000 });
  const match = pattern.exec(`${out.stdout ?? ''}${out.stderr ?? ''}`);
  return match ? match[1] : null;
}
const tools = findTools();
if (tools.iperf3.path) tools.iperf3.version = version(['iperf3', '--version'], /iperf (\S+)/);
if (tools.wrk.path) tools.wrk.version = version(['wrk', '-v'], /wrk (\S+)/);
if (tools.nginx.path) tools.nginx.version = version([tools.nginx.path, '-v'], /nginx\/(\S+)/);
if (tools.haproxy.path) tools.haproxy.version = version([tools.haproxy.path, '-v'], /version (\S+)/);
if (tools.socat.path) tools.socat.version = version([tools.socat.path, '-V'], /socat version (\S+)/);
for (const name of ['redis-benchmark', 'redis-server']) {
  if (tools[name].path) tools[name].version = version([name, '--version'], /(?:v=|redis-benchmark )(\S+)/);
}
const dockerProxyPath = findDockerProxy();
const dockerProxyVersion = dockerProxyPath
  ? (version([dockerProxyPath, '-v'], /version\s+(\S+)/i) ??
    (debianVersion('docker.io') ? `${debianVersion('docker.io')} (Debian docker.io)` : 'unknown version'))
  : null;
const env = {
  tools,
  dockerProxy: dockerProxyPath,
  httpTarget: tools.nginx.path
    ? `nginx ${tools.nginx.version ?? ''} (one process, fixed 200 response)`.replace('  ', ' ')
    : 'Node net server with a fixed 200 response (bench/lib/targets.mjs; nginx is not installed)',
};
const missing = Object.entries(tools).filter(([, t]) => !t.path);
const load = machineInfo().loadAverage[0];
if (load > machineInfo().nproc * 0.5) {
  log(
    `note: load average ${load} on ${machineInfo().nproc} CPUs: other work is running, figures will be noisy`,
  );
}
log(`portsplice benchmark suite (${mode})`);
log(
  `tools: ${Object.entries(tools)
    .map(([n, t]) => `${n} ${t.path ? (t.version ?? 'found') : 'MISSING'}`)
    .join(', ')}; docker-proxy ${dockerProxyPath ? `${dockerProxyPath} ${dockerProxyVersion}` : 'MISSING'}`,
);
for (const [name, t] of missing) log(`  missing ${name} (for ${t.for}): ${t.install}`);

// ---- Where ------------------------------------------------------------------------------

// The machine's own network state, to check afterwards that the run left it as it was.
const snapshot = () =>
  isRoot
    ? {
        netns: sh(['ip', 'netns', 'list'], { allowFail: true }),
        links: (sh(['ip', '-o', 'link', 'show'], { allowFail: true }) ?? '')
          .split('\n')
          .map((l) => l.split(':')[1]?.trim())
          .filter(Boolean)
          .join(' '),
        nat: sh(['iptables', '-w', '5', '-t', 'nat', '-S'], { allowFail: true }),
        filter: sh(['iptables', '-w', '5', '-S'], { allowFail: true }),
      }
    : null;
removeStale(log);
const before = snapshot();
const netnsSkip = netnsSkipReason();
const dockerSkip =
  netnsSkip ?? (values.quick ? 'quick mode' : values['loopback-only'] ? '--loopback-only' : null);
let topology;
try {
  topology = dockerSkip ? loopbackOnly({ privateNs: !netnsSkip }) : dockerTopology({ log });
} catch (error) {
  log(`could not build the namespaces (${error.message}); loopback only, in this namespace`);
  cleanupAll();
  topology = loopbackOnly({ privateNs: false });
}
env.spliceSkip = methods.includes('splice') ? await probeSplice() : null;

// ---- Plan and run -----------------------------------------------------------------------

let steps = 0;
let estimate = 0;
for (const m of METHODS.filter((x) => methods.includes(x.id))) {
  for (const t of tests.filter((x) => !x.engineOnly || m.kind === 'engine')) {
    const times = (t.firstPlaceOnly ? 1 : topology.places.length) * (t.once ? 1 : cfg.rounds);
    steps += times;
    estimate += (t.estimate + 0.1) * times;
  }
}
const doMemory = testIds.includes('memory');
const doMicro = testIds.includes('micro');
if (doMemory) {
  const n = METHODS.filter((m) => PROXY_METHODS.includes(m.id) && methods.includes(m.id));
  steps += n.length;
  estimate += n.length * (2 + cfg.holdCount / 500);
}
if (doMicro) {
  steps++;
  estimate += 10 * (cfg.microTimeMs / 1000 + 0.3) + 1;
}

const started = new Date();
const results = {
  schema: 1,
  mode,
  command: `npm run bench${values.quick ? ' -- --quick' : ''}`,
  startedAt: started.toISOString().replace(/\.\d+Z$/, 'Z'),
  durationSeconds: null,
  machine: machineInfo(),
  tools: Object.fromEntries(
    Object.entries(tools).map(([n, t]) => [n, { path: t.path, version: t.version ?? null, for: t.for }]),
  ),
  dockerProxy: { path: dockerProxyPath, version: dockerProxyVersion },
  httpTarget: env.httpTarget,
  topology: netnsSkip ? `${topology.description} (no namespaces: ${netnsSkip})` : topology.description,
  hostNamespace: topology.hostNs,
  // The churn test depends on it: the host keeps the kernel's default, the client reuses.
  tcpTwReuse: Object.fromEntries(
    topology.places.flatMap((p) => [
      [
        `${p.id} host`,
        sh(['sysctl', '-n', 'net.ipv4.tcp_tw_reuse'], { ns: p.hostNs, allowFail: true })?.trim() ?? null,
      ],
      [
        `${p.id} client`,
        sh(['sysctl', '-n', 'net.ipv4.tcp_tw_reuse'], { ns: p.clientNs, allowFail: true })?.trim() ?? null,
      ],
    ]),
  ),
  config: cfg,
  places: [],
};
const progress = new Progress(steps, estimate);
progress.log(`${steps} steps, about ${Math.round(estimate / 60)} min`);
try {
  await runSuite({
    places: topology.places,
    microNs: topology.hostNs,
    env,
    cfg,
    methods,
    tests,
    doMemory,
    doMicro,
    progress,
    results,
  });
} finally {
  progress.finish();
  cleanupAll();
}
results.durationSeconds = (Date.now() - started.getTime()) / 1000;
results.machine.loadAverageAtEnd = machineInfo().loadAverage;

// ---- Check that nothing was left behind ------------------------------------------------

const after = snapshot();
if (before && after) {
  const leftovers = [];
  if (new RegExp(`psb-\\w+-${process.pid}\\b`).test(after.netns ?? '')) leftovers.push('network namespaces');
  if (/PSB-/.test(`${after.nat}${after.filter}`) && !/PSB-/.test(`${before.nat}${before.filter}`)) {
    leftovers.push('iptables chains');
  }
  const same = ['netns', 'links', 'nat', 'filter'].every((k) => before[k] === after[k]);
  results.cleanup = leftovers.length
    ? `LEFT BEHIND: ${leftovers.join(', ')}`
    : same
      ? 'verified: ip netns list, ip link, iptables -t nat -S and iptables -S are as before the run'
      : 'verified: nothing of this run is left (others changed the network state meanwhile)';
  log(`cleanup ${results.cleanup}`);
}

// ---- Report -----------------------------------------------------------------------------

mkdirSync(path.dirname(outPrefix), { recursive: true });
let analysis;
try {
  analysis = await writeReport(outPrefix, results);
} catch (error) {
  log(`report: ${error.message}`);
  analysis = analyse(results);
}
writeFileSync(`${outPrefix}.json`, `${JSON.stringify(results, null, 2)}\n`);
console.log(`\n${targetsTable(results, analysis)}\n`);
console.log(
  `wrote ${outPrefix}.json, ${outPrefix}.md, ${outPrefix}.svg in ${Math.round(results.durationSeconds)} s`,
);

const errors = [];
for (const place of results.places) {
  if (place.error) errors.push(place.error);
  for (const m of place.methods) {
    if (m.error) errors.push(`${place.id} › ${m.id}: ${m.error}`);
    for (const [t, r] of Object.entries(m.results))
      if (r.error) errors.push(`${place.id} › ${m.id} › ${t}: ${r.error}`);
  }
}
for (const m of results.memory?.methods ?? []) if (m.error) errors.push(`memory › ${m.id}: ${m.error}`);
if (results.micro?.error) errors.push(`micro: ${results.micro.error}`);
if (results.cleanup?.startsWith('LEFT')) errors.push(results.cleanup);
if (errors.length) {
  console.error(`\n${errors.length} error(s):\n${errors.map((e) => `  ${e}`).join('\n')}`);
  process.exit(1);
}
process.exit(0);
