// Turns the raw results into the headline figures, the ratios to docker-proxy and to the
// stream engine, the targets table (pass/miss), a Markdown report and an SVG chart
// (vega-lite compiled to a vega view rendered to SVG in Node, no browser).
import * as vega from 'vega';
import { compile } from 'vega-lite';
import { METHODS, methodNamed } from './methods.mjs';

/** A method's one name in every table and the chart. */
const short = (id) => methodNamed(id)?.short ?? id;

/** The figures the comparisons use, per method, from one place's results. */
export function headline(methodEntry) {
  const r = methodEntry.results ?? {};
  const ok = (t) => (r[t] && !r[t].error && !r[t].skipped ? r[t] : null);
  const bulk = [ok('bulk1'), ok('bulkN')].filter(Boolean);
  const cpu = bulk.every((b) => b.proxyCpuS !== null) ? bulk.reduce((a, b) => a + b.proxyCpuS, 0) : null;
  const bytes = bulk.reduce((a, b) => a + b.bytes, 0);
  return {
    bulk1Gbps: ok('bulk1')?.gbps ?? null,
    bulkNGbps: ok('bulkN')?.gbps ?? null,
    cpuPerGB: bulk.length && cpu !== null && bytes > 0 ? cpu / (bytes / 1e9) : null,
    machineCpuPerGB:
      bulk.length && bytes > 0 ? bulk.reduce((a, b) => a + b.machineCpuS, 0) / (bytes / 1e9) : null,
    kaRps: ok('keepalive')?.rps ?? null,
    kaP99Ms: ok('keepalive')?.p99Ms ?? null,
    kaCpuUs: ok('keepalive')?.cpuUsPerRequest ?? null,
    kaMachineUs: ok('keepalive')?.machineUsPerRequest ?? null,
    ka2Rps: ok('keepalive2')?.rps ?? null,
    cps: ok('connect')?.cps ?? null,
    connCpuUs: ok('connect')?.cpuUsPerConnection ?? null,
    connMachineUs: ok('connect')?.machineUsPerConnection ?? null,
    churnCps: ok('churn')?.cps ?? null,
    churnMinCps: ok('churn')?.minCps ?? null,
    udpPps: ok('udp')?.deliveredPps ?? null,
    rttP99Us: ok('latency')?.p99Us ?? null,
    eldP99Ms: ok('eld')?.loaded?.p99Ms ?? null,
    eldExcessMs: ok('eld') ? ok('eld').loaded.p99Ms - ok('eld').bystander.loaded.p99Ms : null,
  };
}

const RATIO_METRICS = [
  { key: 'bulk1Gbps', label: 'bulk ×1' },
  { key: 'bulkNGbps', label: 'bulk ×N' },
  { key: 'cpuPerGB', label: 'CPU s/GB' },
  { key: 'kaRps', label: 'keep-alive req/s' },
  { key: 'kaP99Ms', label: 'keep-alive p99' },
  { key: 'ka2Rps', label: 'keep-alive 2 thr' },
  { key: 'cps', label: 'new conn/s' },
  { key: 'churnMinCps', label: 'churn, min slice' },
  { key: 'udpPps', label: 'UDP delivered' },
  { key: 'rttP99Us', label: 'RTT p99 (c=1)' },
];

// The goals (issue 10 added the churn, 2-thread keep-alive and per-unit CPU rows, and raised
// bulk ×N to 1.2× and new connections/s to 1.5×). `baseKey`: compare with another figure of
// the `vs` method (the churn's slowest slice against direct's mean rate).
export const TARGETS = [
  { text: 'proxy CPU s per GB, bulk TCP', key: 'cpuPerGB', vs: 'docker-proxy', op: '<=', limit: 0.5 },
  { text: 'bulk throughput, 1 stream', key: 'bulk1Gbps', vs: 'docker-proxy', op: '>=', limit: 1.0 },
  { text: 'bulk throughput, N streams', key: 'bulkNGbps', vs: 'docker-proxy', op: '>=', limit: 1.2 },
  { text: 'keep-alive requests/s', key: 'kaRps', vs: 'docker-proxy', op: '>=', limit: 1.5 },
  {
    text: 'keep-alive requests/s, 2 wrk threads ×128',
    key: 'ka2Rps',
    vs: 'docker-proxy',
    op: '>=',
    limit: 1.5,
  },
  { text: 'keep-alive p99 latency', key: 'kaP99Ms', vs: 'docker-proxy', op: '<=', limit: 0.5 },
  { text: 'proxy CPU per keep-alive request', key: 'kaCpuUs', vs: 'docker-proxy', op: '<=', limit: 0.5 },
  { text: 'new connections/s', key: 'cps', vs: 'docker-proxy', op: '>=', limit: 1.5 },
  { text: 'proxy CPU per new connection', key: 'connCpuUs', vs: 'docker-proxy', op: '<=', limit: 0.5 },
  {
    text: 'churn (redis -k 0), slowest slice',
    key: 'churnMinCps',
    vs: 'direct',
    baseKey: 'churnCps',
    op: '>=',
    limit: 0.8,
  },
  { text: 'UDP delivered datagrams/s', key: 'udpPps', vs: 'docker-proxy', op: '>=', limit: 2 },
  { text: 'proxy CPU s per GB, bulk TCP', key: 'cpuPerGB', vs: 'stream', op: '<=', limit: 0.33 },
  {
    text: 'event-loop p99 delay, forwarding flat out',
    key: 'eldP99Ms',
    vs: null,
    op: '<',
    limit: 1,
    unit: 'ms',
    methods: ['splice'],
  },
  {
    text: '(same, minus an idle Node process’s p99 at the same time)',
    key: 'eldExcessMs',
    vs: null,
    op: '<',
    limit: 1,
    unit: 'ms',
    methods: ['splice'],
  },
];
const TARGET_METHODS = ['splice', 'drop-in'];

/** Ratios and target verdicts for every place. */
export function analyse(results) {
  const out = [];
  for (const place of results.places) {
    const figures = Object.fromEntries(place.methods.map((m) => [m.id, headline(m)]));
    const ratios = {};
    for (const m of place.methods) {
      ratios[m.id] = {};
      for (const { key } of RATIO_METRICS) {
        const v = figures[m.id][key];
        const ratio = (base) => {
          const b = figures[base]?.[key];
          return v !== null && b !== null && b !== undefined && b !== 0 ? v / b : null;
        };
        ratios[m.id][key] = {
          dockerProxy: ratio('docker-proxy'),
          stream: ratio('stream'),
          direct: ratio('direct'),
        };
      }
    }
    const targets = [];
    for (const target of TARGETS) {
      for (const method of TARGET_METHODS) {
        if (target.methods && !target.methods.includes(method)) continue;
        const v = figures[method]?.[target.key] ?? null;
        let value = v;
        let why = null;
        const measured = Object.values(figures).some((f) => f[target.key] !== null);
        if (!measured) why = 'not measured in this run';
        else if (v === null) why = `no ${short(method)} figure`;
        if (target.vs) {
          const base = figures[target.vs]?.[target.baseKey ?? target.key] ?? null;
          if (base === null && !why) why = `no ${short(target.vs)} figure`;
          value = why ? null : v / base;
        }
        const pass =
          value === null
            ? null
            : { '<=': value <= target.limit, '>=': value >= target.limit, '<': value < target.limit }[
                target.op
              ];
        targets.push({
          target: `${target.text}${target.vs ? ` vs ${short(target.vs)}` : ''}`,
          place: place.id,
          method,
          value,
          op: target.op,
          limit: target.limit,
          unit: target.unit ?? '×',
          pass,
          why,
        });
      }
    }
    out.push({ place: place.id, figures, ratios, targets });
  }
  return out;
}

// ---- Markdown -------------------------------------------------------------------------

const num = (x, digits = 2) =>
  x === null || x === undefined || Number.isNaN(x)
    ? '–'
    : x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const int = (x) => num(x, 0);

/** A Markdown table; the first `textColumns` columns are left-aligned, the others right. */
function table(header, rows, textColumns = 1) {
  const align = header.map((h, i) => (i < textColumns ? '---' : '--:'));
  const lines = [`| ${header.join(' | ')} |`, `| ${align.join(' | ')} |`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** A result cell: the value, or why there is none. */
function cell(result, fn) {
  if (!result) return '–';
  if (result.skipped) return 'skipped';
  if (result.error) return 'error';
  return fn(result);
}

/** " ±x%": half the range of the rounds' main figure, relative to their median. */
function spread(r) {
  const f = r.roundFigures;
  if (!f || f.length < 2) return '';
  const sorted = [...f].sort((a, b) => a - b);
  const mid = sorted[sorted.length >> 1];
  return mid ? ` ±${Math.round(((sorted[sorted.length - 1] - sorted[0]) / 2 / mid) * 100)}%` : '';
}

function ratioCell(r) {
  const f = (x) => (x === null ? '–' : `${x.toFixed(2)}×`);
  return `${f(r.dockerProxy)} · ${f(r.stream)}`;
}

export function verdict(t) {
  if (t.pass === null) return `n/a (${t.why})`;
  const v = t.unit === '×' ? `${t.value.toFixed(2)}×` : `${t.value.toFixed(3)} ${t.unit}`;
  return t.pass ? `pass (${v})` : `**MISS** (${v})`;
}

/** The targets table: one row per target, a column per place and portsplice method. */
export function targetsTable(results, analysis) {
  const columns = [];
  for (const a of analysis) for (const m of TARGET_METHODS) columns.push({ place: a.place, method: m });
  const rows = [];
  for (const target of TARGETS) {
    const name = `${target.text}${target.vs ? ` vs ${short(target.vs)}` : ''}`;
    const goal = `${target.op === '<' ? '<' : target.op === '<=' ? '≤' : '≥'} ${target.limit}${target.unit ? ` ${target.unit}` : '×'}`;
    const cells = columns.map(({ place, method }) => {
      const t = analysis
        .find((a) => a.place === place)
        .targets.find((x) => x.target === name && x.method === method);
      return t ? verdict(t) : '–';
    });
    rows.push([name, goal, ...cells]);
  }
  return table(['target', 'goal', ...columns.map((c) => `${c.place}: ${short(c.method)}`)], rows);
}

function placeTables(place, analysis, cfg) {
  const a = analysis.find((x) => x.place === place.id);
  const n = cfg.streams > 1 ? cfg.streams : null;
  const parts = [];
  const label = (m) =>
    m.skipped ? `${short(m.id)} — skipped` : m.error ? `${short(m.id)} — error` : short(m.id);

  const bulkHeader = ['method', 'bulk ×1 Gbit/s', 'proxy CPU s/GB ×1'];
  if (n) bulkHeader.push(`bulk ×${n} Gbit/s`, `proxy CPU s/GB ×${n}`);
  bulkHeader.push('machine CPU s/GB', 'UDP delivered datagrams/s', 'UDP loss', 'proxy CPU µs/datagram');
  parts.push(
    table(
      bulkHeader,
      place.methods.map((m) => {
        const r = m.results;
        const row = [
          label(m),
          cell(r.bulk1, (x) => num(x.gbps) + spread(x)),
          cell(r.bulk1, (x) => num(x.cpuPerGB, 3)),
        ];
        if (n)
          row.push(
            cell(r.bulkN, (x) => num(x.gbps) + spread(x)),
            cell(r.bulkN, (x) => num(x.cpuPerGB, 3)),
          );
        row.push(
          num(a.figures[m.id].machineCpuPerGB, 2),
          cell(r.udp, (x) => int(x.deliveredPps) + spread(x)),
          cell(r.udp, (x) => `${num(x.lossPct, 1)}%`),
          cell(r.udp, (x) => num(x.cpuUsPerDatagram, 2)),
        );
        return row;
      }),
    ),
  );
  parts.push(
    table(
      [
        'method',
        'keep-alive req/s',
        'p50 ms',
        'p99 ms',
        'p99.9 ms',
        'proxy CPU µs/req',
        'new conn/s',
        'proxy CPU µs/conn',
        'RTT c=1 p50 µs',
        'p99 µs',
        'p99.9 µs',
      ],
      place.methods.map((m) => {
        const r = m.results;
        return [
          label(m),
          cell(r.keepalive, (x) => int(x.rps) + spread(x)),
          cell(r.keepalive, (x) => num(x.p50Ms)),
          cell(r.keepalive, (x) => num(x.p99Ms)),
          cell(r.keepalive, (x) => num(x.p999Ms)),
          cell(r.keepalive, (x) => num(x.cpuUsPerRequest, 1)),
          cell(r.connect, (x) => int(x.cps) + spread(x)),
          cell(r.connect, (x) => num(x.cpuUsPerConnection, 1)),
          cell(r.latency, (x) => int(x.p50Us)),
          cell(r.latency, (x) => int(x.p99Us)),
          cell(r.latency, (x) => int(x.p999Us)),
        ];
      }),
    ),
  );
  const has = (test) => place.methods.some((m) => m.results?.[test]);
  if (has('keepalive2') || has('keepalive') || has('connect')) {
    const ka2 = place.methods.find((m) => m.results?.keepalive2 && !m.results.keepalive2.error)?.results
      .keepalive2;
    const ka2Label = ka2 ? `${ka2.threads} threads ×${ka2.connections}` : '2 threads';
    parts.push(
      `Keep-alive with ${ka2Label} (wrk), and the machine's CPU per unit of work (every core, load ` +
        'generators and target included):\n\n' +
        table(
          [
            'method',
            `keep-alive ${ka2Label} req/s`,
            'p99 ms',
            'proxy CPU µs/req',
            'machine CPU µs/req',
            `machine CPU µs/req (×${cfg.wrkConnections})`,
            'machine CPU µs/conn',
          ],
          place.methods.map((m) => {
            const r = m.results;
            return [
              label(m),
              cell(r.keepalive2, (x) => int(x.rps) + spread(x)),
              cell(r.keepalive2, (x) => num(x.p99Ms)),
              cell(r.keepalive2, (x) => num(x.cpuUsPerRequest, 1)),
              cell(r.keepalive2, (x) => num(x.machineUsPerRequest, 1)),
              cell(r.keepalive, (x) => num(x.machineUsPerRequest, 1)),
              cell(r.connect, (x) => num(x.machineUsPerConnection, 1)),
            ];
          }),
        ),
    );
  }
  if (has('churn')) {
    const c = place.methods.find((m) => m.results?.churn?.slices)?.results.churn;
    const directMean = a.figures.direct?.churnCps ?? null;
    parts.push(
      `Connection churn: redis-benchmark \`-t ping_inline -k 0 -c ${c?.clients ?? cfg.churnClients}\` (a new ` +
        `connection per PING, the client closes first) for ${num(c?.seconds ?? cfg.churnSeconds, 0)} s per method, ` +
        `connections/s per ${c?.sliceSeconds ?? cfg.churnSliceSeconds} s slice as counted by the target ` +
        '(redis INFO total_connections_received). "÷ direct": the slowest slice over the direct path\'s mean. ' +
        "TIME_WAIT: the host namespace's sockets in that state toward the method's redis-server at the " +
        'end (the proxy is the active closer toward the target).\n\n' +
        table(
          [
            'method',
            'first slice conn/s',
            'last slice',
            'min slice',
            'min ÷ direct',
            'every slice',
            'proxy CPU % of a core, every slice',
            'proxy CPU µs/conn',
            'machine CPU µs/conn',
            'client exits',
            'TIME_WAIT on host',
          ],
          place.methods.map((m) => {
            const r = m.results;
            return [
              label(m),
              cell(r.churn, (x) => int(x.firstCps)),
              cell(r.churn, (x) => int(x.lastCps)),
              cell(r.churn, (x) => int(x.minCps)),
              cell(r.churn, (x) => (directMean ? `${num(x.minCps / directMean)}×` : '–')),
              cell(r.churn, (x) => x.slices.map((y) => int(y.cps)).join(' ')),
              cell(r.churn, (x) =>
                x.slices
                  .map((y) => (y.proxyCpuS === null ? '–' : int((y.proxyCpuS / y.seconds) * 100)))
                  .join(' '),
              ),
              cell(r.churn, (x) => num(x.cpuUsPerConnection, 0)),
              cell(r.churn, (x) => num(x.machineUsPerConnection, 0)),
              cell(r.churn, (x) => int(x.clientExits)),
              cell(r.churn, (x) => int(x.hostTimeWait)),
            ];
          }),
        ),
    );
  }
  const metrics = RATIO_METRICS.filter((m) => n || m.key !== 'bulkNGbps');
  parts.push(
    `Ratios, each cell "vs docker-proxy · vs stream engine" (for CPU, p99 and RTT lower is better):\n\n` +
      table(
        ['method', ...metrics.map((m) => m.label.replace('×N', `×${n}`))],
        place.methods
          .filter((m) => !m.skipped && !m.error)
          .map((m) => [short(m.id), ...metrics.map(({ key }) => ratioCell(a.ratios[m.id][key]))]),
      ),
  );
  return parts.join('\n\n');
}

function issues(results) {
  const lines = [];
  for (const place of results.places) {
    if (place.error) lines.push(`- ${place.id}: ${place.error}`);
    for (const m of place.methods) {
      if (m.skipped) lines.push(`- ${place.id} › ${short(m.id)}: skipped, ${m.skipped}`);
      if (m.error) lines.push(`- ${place.id} › ${short(m.id)}: ${m.error}`);
      for (const [test, r] of Object.entries(m.results ?? {})) {
        if (r.skipped) lines.push(`- ${place.id} › ${short(m.id)} › ${test}: skipped, ${r.skipped}`);
        if (r.error) lines.push(`- ${place.id} › ${short(m.id)} › ${test}: error, ${r.error}`);
      }
    }
  }
  for (const m of results.memory?.methods ?? []) {
    if (m.skipped) lines.push(`- memory › ${short(m.id)}: skipped, ${m.skipped}`);
    if (m.error) lines.push(`- memory › ${short(m.id)}: error, ${m.error}`);
  }
  for (const [engine, reason] of Object.entries(results.micro?.skipped ?? {})) {
    lines.push(`- micro-benchmarks › ${engine}: skipped, ${reason}`);
  }
  if (results.micro?.error) lines.push(`- micro-benchmarks: error, ${results.micro.error}`);
  return lines;
}

/** What a reader needs to weigh the targets table: where the figures come from. */
function targetNotes(results) {
  const notes = [
    'Ratios are portsplice ÷ the other method in the same run and place; CPU per GB is the proxy ' +
      'process CPU over all bulk TCP runs of the place divided by the bytes they moved.',
    'Churn: the slowest slice of connections/s through the method over the mean rate of the direct ' +
      'path in the same run (the goal: stay within 0.8× of direct for the whole test).',
  ];
  for (const place of results.places) {
    const e = place.methods.find((m) => m.id === 'splice')?.results?.eld;
    if (!e || e.error || e.skipped) continue;
    notes.push(
      `Event loop, ${place.id}: while forwarding flat out the splice engine's JavaScript thread was ` +
        `${num(e.jsThreadCpuPct, 1)}% busy and its event loop's p99 delay ${num(e.loaded.p99Ms, 3)} ms; an idle ` +
        `Node process measured at the same time (nothing to do at all) saw ${num(e.bystander.loaded.p99Ms, 3)} ms ` +
        `(idle machine: ${num(e.bystander.idle.p99Ms, 3)} ms), so the delay is the scheduling of a machine whose ` +
        `${results.machine.nproc} cores the load generators, the target and the proxy keep busy.`,
    );
  }
  return `\n\n${notes.map((n) => `- ${n}`).join('\n')}`;
}

export function machineLine(results) {
  const m = results.machine;
  return (
    `${m.nproc} × ${m.cpuModel}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}, ` +
    `docker-proxy ${results.dockerProxy.version ?? 'not installed'}`
  );
}

/** One compact table of the headline figures of every place (the README shows it). */
export function headlineTable(results, analysis) {
  const n = results.config.streams > 1 ? results.config.streams : null;
  const header = ['place', 'method', 'bulk ×1 Gbit/s'];
  if (n) header.push(`bulk ×${n} Gbit/s`);
  header.push(
    'proxy CPU s/GB',
    'machine CPU s/GB',
    'keep-alive req/s',
    'keep-alive p99 ms',
    'proxy CPU µs/req',
    'machine CPU µs/req',
    'keep-alive 2 thr ×128 req/s',
    'new conn/s',
    'churn min slice conn/s',
    'UDP delivered/s',
  );
  const rows = [];
  for (const a of analysis) {
    const place = results.places.find((p) => p.id === a.place);
    for (const m of place.methods) {
      if (m.skipped || m.error) {
        rows.push([
          a.place,
          `${short(m.id)} (${m.skipped ? 'skipped' : 'error'})`,
          ...header.slice(2).map(() => '–'),
        ]);
        continue;
      }
      const f = a.figures[m.id];
      const row = [a.place, short(m.id), num(f.bulk1Gbps, 1)];
      if (n) row.push(num(f.bulkNGbps, 1));
      row.push(
        num(f.cpuPerGB, 2),
        num(f.machineCpuPerGB, 2),
        int(f.kaRps),
        num(f.kaP99Ms, 2),
        num(f.kaCpuUs, 1),
        num(f.kaMachineUs, 1),
        int(f.ka2Rps),
        int(f.cps),
        int(f.churnMinCps),
        int(f.udpPps),
      );
      rows.push(row);
    }
  }
  return table(header, rows, 2);
}

/** The throughput figures whose ratio to the direct path the summary sentence gives. */
const DIRECT_METRICS = ['bulk1Gbps', 'bulkNGbps', 'kaRps', 'ka2Rps', 'cps', 'churnCps', 'udpPps'];

/**
 * One sentence per place: what fraction of the direct path (no proxy) each method reaches,
 * over the throughput figures it has (the lowest and highest of them).
 */
export function directFractions(results, analysis) {
  const lines = [];
  for (const a of analysis) {
    const place = results.places.find((p) => p.id === a.place);
    const parts = [];
    for (const m of place.methods) {
      if (m.id === 'direct' || m.skipped || m.error) continue;
      const shares = DIRECT_METRICS.map((k) => a.ratios[m.id][k]?.direct).filter(
        (x) => x !== null && x !== undefined,
      );
      if (!shares.length) continue;
      const lo = Math.round(Math.min(...shares) * 100);
      const hi = Math.round(Math.max(...shares) * 100);
      parts.push(`${short(m.id)} ${lo === hi ? `${lo}%` : `${lo}–${hi}%`}`);
    }
    if (parts.length) {
      lines.push(
        `${a.place}: of the direct path's throughput (bulk, keep-alive and new-connection rates, ` +
          `churn, UDP; the lowest and highest figure), ${parts.join(', ')}.`,
      );
    }
  }
  return lines;
}

export function markdown(results, analysis) {
  const cfg = results.config;
  const out = [];
  out.push(`# portsplice benchmark results (${results.mode})`);
  const caveats = runCaveats(results);
  if (caveats.length) out.push(`**Caution:** ${caveats.join('; ')}.`);
  out.push(
    `Taken ${results.startedAt} in ${Math.round(results.durationSeconds)} s with \`${results.command}\`.\n\n` +
      `- Machine: ${machineLine(results)}; load average ${results.machine.loadAverage.join(', ')} at the ` +
      `start, ${results.machine.loadAverageAtEnd?.join(', ') ?? '?'} at the end (1, 5, 15 min; other work ` +
      'on the machine shows there).\n' +
      `- Where: ${results.topology}. HTTP target: ${results.httpTarget}.\n` +
      `- Tools: ${Object.entries(results.tools)
        .map(([name, t]) => `${name} ${t.path ? (t.version ?? 'found') : '**missing**'}`)
        .join(', ')}.\n` +
      `- Each figure is the median of ${cfg.rounds} round${cfg.rounds > 1 ? 's' : ''} (every method ` +
      `takes its turn in each test of a round) of ${cfg.bulkSeconds} s (bulk, iperf3), ${cfg.udpSeconds} s (UDP, iperf3 ` +
      `-b 0 -l ${cfg.udpLength}), ${cfg.wrkSeconds} s (wrk, 1 thread, ${cfg.wrkConnections} connections; ` +
      `and ${cfg.ka2Threads ?? 2} threads, ${cfg.ka2Connections ?? 128} connections), ` +
      `${cfg.latencySeconds} s (RTT at concurrency ${cfg.latencyConcurrency})` +
      (cfg.churnSeconds
        ? `; the churn test runs once per method, ${cfg.churnSeconds} s, in the first place only`
        : '') +
      `. CPU is the proxy's own ` +
      `(/proc/PID/stat, all threads, for socat its children's too; or process.cpuUsage() in the ` +
      "engine's Node process), per GB = 10^9 bytes; " +
      '"machine CPU" is every core of the machine (load generators and target included: the one CPU ' +
      'figure that covers kernel NAT). ±: half the range of the rounds, relative to the median.' +
      (results.tcpTwReuse
        ? `\n- net.ipv4.tcp_tw_reuse: ${Object.entries(results.tcpTwReuse)
            .map(([k, v]) => `${k} ${v ?? '?'}`)
            .join(', ')} (the host keeps the kernel's default; only the client's namespace reuses).`
        : '') +
      `\n- Methods, by the names the tables use (\`--methods\` takes them in lower case, a hyphen for the space): ${METHODS.map(
        (m) => `${m.short} (${m.about})`,
      ).join(', ')}.`,
  );
  out.push('## Targets\n\n' + targetsTable(results, analysis) + targetNotes(results));
  const fractions = directFractions(results, analysis);
  out.push(
    '## Headline figures\n\n' +
      headlineTable(results, analysis) +
      (fractions.length ? `\n\n${fractions.map((l) => `- ${l}`).join('\n')}` : ''),
  );
  for (const place of results.places) {
    out.push(`## ${place.title}`);
    if (place.error) {
      out.push(place.error);
      continue;
    }
    out.push(placeTables(place, analysis, cfg));
  }
  const eldRows = [];
  for (const place of results.places) {
    for (const m of place.methods) {
      const e = m.results?.eld;
      if (!e) continue;
      if (e.error || e.skipped) {
        eldRows.push([place.id, short(m.id), e.error ? 'error' : 'skipped', '', '', '', '', '', '', '']);
        continue;
      }
      eldRows.push([
        place.id,
        short(m.id),
        num(e.idle.p99Ms, 3),
        num(e.loaded.p50Ms, 3),
        num(e.loaded.p99Ms, 3),
        num(e.loaded.maxMs, 3),
        num(e.bystander.loaded.p99Ms, 3),
        `${num(e.jsThreadCpuPct, 1)}%`,
        num(e.jsThreadWaitMsPerS, 0),
        num(e.gbps),
      ]);
    }
  }
  if (eldRows.length) {
    out.push(
      '## JavaScript event loop of the in-process engines\n\n' +
        'perf_hooks.monitorEventLoopDelay (1 ms timer; delay = interval − 1 ms) in the proxy process, idle, ' +
        `then while iperf3 forwards flat out with ${Math.max(1, cfg.streams)} stream(s). The bystander is an ` +
        'idle Node process measured at the same time: its delay is what the scheduling of a machine whose ' +
        'cores are all busy (load generators, target, proxy) causes by itself. JS thread: CPU use of the ' +
        "proxy process's main thread and the time it waited, runnable, for a CPU (/proc/PID/task/PID).\n\n" +
        table(
          [
            'place',
            'engine',
            'idle p99 ms',
            'flat out p50 ms',
            'flat out p99 ms',
            'max ms',
            'bystander p99 ms',
            'JS thread CPU',
            'JS thread wait ms/s',
            'Gbit/s meanwhile',
          ],
          eldRows,
          2,
        ),
    );
  }
  if (results.memory) {
    out.push(
      `## Memory (${results.memory.place}, ${results.memory.count} connections held open)\n\n` +
        'Resident set of the proxy process(es): one mapping, idle, then with the connections open ' +
        '(the in-process engines include the whole Node runtime; socat, a process per connection: ' +
        'the proportional set size summed over its processes, shared pages divided among them).\n\n' +
        table(
          [
            'method',
            'idle RSS kB',
            'RSS with connections kB',
            'kB per connection',
            'fds per connection',
            'connections open',
          ],
          results.memory.methods.map((m) =>
            m.skipped || m.error
              ? [short(m.id), m.skipped ? 'skipped' : 'error', '', '', '', '']
              : [
                  short(m.id),
                  int(m.idleKb),
                  int(m.loadedKb),
                  num(m.perConnKb),
                  num(m.fdsPerConn, 1),
                  int(m.open),
                ],
          ),
        ),
    );
  }
  if (results.micro?.tasks) {
    out.push(
      `## Micro-benchmarks (tinybench, ${results.micro.timeMs} ms per task)\n\n` +
        'Client, and for the stream engine the proxy, in one Node process; the echo target in another.\n\n' +
        table(
          ['task', 'ops/s', 'mean µs', 'p50 µs', 'p99 µs', 'samples'],
          results.micro.tasks.map((t) =>
            t.error
              ? [t.name, 'error', '', '', '', '']
              : [
                  t.name,
                  int(t.opsPerSec),
                  num(t.meanUs, 1),
                  num(t.p50Us, 1),
                  num(t.p99Us, 1),
                  int(t.samples),
                ],
          ),
        ),
    );
  }
  const problems = issues(results);
  out.push(
    '## Skipped and failed\n\n' +
      (problems.length ? problems.join('\n') : 'Nothing: every method and test ran.'),
  );
  return out.join('\n\n') + '\n';
}

// ---- Chart ------------------------------------------------------------------------------

// `test`: the test whose rounds' main figure (suite.mjs MAIN_FIGURE) the metric is, so that its
// spread over the rounds can be drawn; metrics derived from several figures have none.
const CHART_METRICS = [
  { key: 'bulk1Gbps', test: 'bulk1', title: 'Bulk TCP, 1 stream: Gbit/s ↑', digits: 1 },
  { key: 'cpuPerGB', title: 'Proxy CPU seconds per GB ↓', digits: 2 },
  {
    key: 'kaRps',
    test: 'keepalive',
    title: 'HTTP keep-alive: thousand requests/s ↑',
    digits: 0,
    scale: 1e-3,
    suffix: 'k',
  },
  { key: 'kaP99Ms', title: 'HTTP keep-alive: p99 latency ms ↓', digits: 2 },
  {
    key: 'ka2Rps',
    test: 'keepalive2',
    title: 'Keep-alive, 2 threads ×128: thousand requests/s ↑',
    digits: 0,
    scale: 1e-3,
    suffix: 'k',
  },
  {
    key: 'cps',
    test: 'connect',
    title: 'New connections: thousand/s ↑',
    digits: 1,
    scale: 1e-3,
    suffix: 'k',
  },
  {
    key: 'churnMinCps',
    test: 'churn',
    title: 'Churn (redis -k 0), slowest slice: thousand conn/s ↑',
    digits: 2,
    scale: 1e-3,
    suffix: 'k',
  },
  {
    key: 'udpPps',
    test: 'udp',
    title: 'UDP delivered: thousand datagrams/s ↑',
    digits: 0,
    scale: 1e-3,
    suffix: 'k',
  },
];
// From the suite's hold test (results.memory): what one more open connection costs.
const MEMORY_METRICS = [
  { key: 'perConnKb', title: 'Memory per open connection: KiB ↓', digits: 1 },
  { key: 'fdsPerConn', title: 'Descriptors per open connection ↓', digits: 1 },
];

/** The methods that are portsplice (drawn in bold). */
const PORTSPLICE_METHODS = METHODS.filter((m) => m.portsplice).map((m) => m.short);

/**
 * What a reader of the figures must know about the run: that it was short (fewer than 3
 * rounds, or the quick mode), or that the machine was busy (a 1-minute load average above
 * half the CPUs at the start, when nothing of the suite runs yet, or above twice the CPUs
 * at the end).
 */
export function runCaveats(results) {
  const notes = [];
  const cfg = results.config ?? {};
  const m = results.machine;
  if (results.mode !== 'full' || (cfg.rounds ?? 1) < 3) {
    notes.push(
      `short run (${results.mode}, ${cfg.rounds ?? '?'} round${cfg.rounds === 1 ? '' : 's'} of ` +
        `${cfg.wrkSeconds ?? '?'} s): figures are indicative only`,
    );
  }
  const [start] = m.loadAverage ?? [];
  const [end] = m.loadAverageAtEnd ?? [];
  if (start > m.nproc * 0.5) notes.push(`machine busy at the start (load ${start} on ${m.nproc} CPUs)`);
  if (end > m.nproc * 2) notes.push(`machine busy at the end (load ${end} on ${m.nproc} CPUs)`);
  return notes;
}

/** min and max of a test's rounds, scaled as the chart shows them, or null (one round). */
function roundsRange(methodEntry, test, scale) {
  const r = methodEntry?.results?.[test];
  const f = r && !r.error && !r.skipped ? r.roundFigures : null;
  if (!f || f.length < 2) return null;
  return { lo: Math.min(...f) * scale, hi: Math.max(...f) * scale, n: f.length };
}

export function chartSpec(results, analysis) {
  const values = [];
  for (const a of analysis) {
    const place = results.places?.find((p) => p.id === a.place);
    for (const [method, figures] of Object.entries(a.figures)) {
      for (const metric of CHART_METRICS) {
        const v = figures[metric.key];
        if (v === null || v === undefined) continue;
        const scale = metric.scale ?? 1;
        const shown = v * scale;
        const range = metric.test
          ? roundsRange(
              place?.methods.find((m) => m.id === method),
              metric.test,
              scale,
            )
          : null;
        const fmt = (x) => `${x.toFixed(metric.digits)}${metric.suffix ?? ''}`;
        values.push({
          metric: metric.title,
          place: a.place,
          method: short(method),
          value: shown,
          lo: range?.lo ?? shown,
          hi: range?.hi ?? shown,
          labelAt: Math.max(shown, range?.hi ?? shown),
          label: range ? `${fmt(shown)} (${fmt(range.lo)}–${fmt(range.hi)})` : fmt(shown),
        });
      }
    }
  }
  for (const m of results.memory?.methods ?? []) {
    for (const metric of MEMORY_METRICS) {
      const v = m[metric.key];
      if (v === null || v === undefined || m.error) continue;
      values.push({
        metric: metric.title,
        place: results.memory.place,
        method: short(m.id),
        value: v,
        lo: v,
        hi: v,
        labelAt: v,
        label: v.toFixed(metric.digits),
      });
    }
  }
  const methodOrder = METHODS.map((m) => m.short);
  const placeOrder = analysis.map((a) => a.place);
  const bold = `indexof(${JSON.stringify(PORTSPLICE_METHODS)}, datum.value) >= 0`;
  const encoding = {
    y: {
      field: 'method',
      type: 'nominal',
      sort: methodOrder,
      title: null,
      axis: { labelFontWeight: { condition: { test: bold, value: 'bold' }, value: 'normal' } },
    },
    yOffset: { field: 'place', type: 'nominal', sort: placeOrder },
    x: { field: 'value', type: 'quantitative', title: null, axis: { labelFlush: true, tickCount: 4 } },
    color: {
      field: 'place',
      type: 'nominal',
      sort: placeOrder,
      title: 'client → proxy',
      legend: { orient: 'top', direction: 'horizontal' },
    },
  };
  const m = results.machine;
  const load = (l) => (l ? l[0] : '?');
  const caveats = runCaveats(results);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `portsplice benchmark (${results.mode}), ${results.startedAt.slice(0, 10)}`,
      subtitle: [
        `${m.nproc} × ${m.cpuModel}, Linux ${m.kernel}, Node ${m.node}, ` +
          `docker-proxy ${results.dockerProxy.version ?? 'not installed'}`,
        `Load average ${load(m.loadAverage)} at the start, ${load(m.loadAverageAtEnd)} at the end; ` +
          `${results.config?.rounds ?? '?'} rounds, bars are medians, the thin line and the figures in ` +
          'brackets the range over the rounds.',
        `portsplice's methods in bold: ${PORTSPLICE_METHODS.join(', ')}.`,
        ...(caveats.length ? [`Caution: ${caveats.join('; ')}.`] : []),
      ],
      subtitleColor: caveats.length ? '#a00' : '#333',
      anchor: 'start',
    },
    background: 'white',
    data: { values },
    facet: {
      field: 'metric',
      type: 'nominal',
      sort: [...CHART_METRICS, ...MEMORY_METRICS].map((x) => x.title),
      title: null,
      header: { labelFontWeight: 'bold', labelFontSize: 11, labelAnchor: 'start' },
    },
    columns: 2,
    // Room on the right of each panel for the figures and their ranges.
    spacing: { column: 110, row: 20 },
    spec: {
      width: 280,
      height: { step: placeOrder.length > 1 ? 9 : 14 },
      encoding,
      layer: [
        { mark: { type: 'bar' } },
        {
          mark: { type: 'rule', color: '#222', strokeWidth: 1 },
          encoding: { x: { field: 'lo', type: 'quantitative' }, x2: { field: 'hi' } },
        },
        {
          mark: { type: 'text', align: 'left', dx: 3, fontSize: 8 },
          encoding: {
            x: { field: 'labelAt', type: 'quantitative' },
            text: { field: 'label' },
            color: { value: '#333' },
          },
        },
      ],
    },
    resolve: { scale: { x: 'independent' } },
    config: { font: 'Helvetica, Arial, sans-serif', view: { stroke: null } },
  };
}

export async function renderSvg(spec) {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
