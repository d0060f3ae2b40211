// Unit tests of what the CLI prints (dist/cli/view.js) and of its Prometheus metrics
// (dist/cli/metrics.js), on hand-made stats snapshots of TCP and UDP mappings.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  formatBytes,
  formatRate,
  formatDuration,
  jsonStatsLine,
  INITIAL_VIEW_STATE,
  handleKey,
  renderFrame,
  rates,
  startupLine,
  startJsonLines,
} from '../dist/cli/view.js';
import {
  createMetrics,
  startMetricsServer,
  stopMetricsServer,
  wantsOpenMetrics,
} from '../dist/cli/metrics.js';
import { healthOf } from '../dist/cli/run.js';
import { httpGet } from './cli-helpers.mjs';
import { V4 } from './helpers.mjs';

function tcpStats(
  id,
  { port = 8000 + id, active = 0, accepted = 0, failed = 0, toTarget = 0n, toClient = 0n } = {},
) {
  return {
    id,
    proto: 'tcp',
    listen: { host: '127.0.0.1', port },
    target: { host: '10.0.0.2', port: 80 },
    connections: {
      accepted,
      active,
      failed,
      failedBy: { refused: failed, timeout: 0, unreachable: 0, other: 0 },
    },
    proxyHeaders: { sent: 0, received: 0, rejected: 0 },
    bytes: { toTarget, toClient, spliced: toTarget + toClient, copied: 0n },
    pipes: { inUse: 0, fallbacks: 0 },
    events: { dropped: 0 },
  };
}

function udpStats(id, { toTarget = 0n, toClient = 0n } = {}) {
  return {
    id,
    proto: 'udp',
    listen: { host: '::', port: 53 },
    target: { host: 'fd00::2', port: 53 },
    flows: { active: 2, created: 5, expired: 3, evicted: 0 },
    datagrams: { toTarget: 10, toClient: 9 },
    dropped: { total: 4, noFlow: 0, queueFull: 1, refused: 3, truncated: 0, other: 0 },
    bytes: { toTarget, toClient, spliced: 0n, copied: toTarget + toClient },
  };
}

const fakeProxy = (stats) => ({ engine: stats.engine, stats: () => stats });

describe('formatting', () => {
  test('bytes, rates, durations', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(200n * 1024n * 1024n), '200 MiB');
    assert.equal(formatBytes(2n ** 70n), '1024 EiB');
    assert.equal(formatRate(1048576), '1.0 MiB/s');
    assert.equal(formatRate(-5), '0 B/s');
    assert.equal(formatDuration(0), '00:00:00');
    assert.equal(formatDuration(3723_000), '01:02:03');
    assert.equal(formatDuration(90_000_000), '1d 01:00:00');
  });

  test('startup line', () => {
    assert.equal(
      startupLine({
        id: 3,
        proto: 'udp',
        listen: { host: '::1', port: 53 },
        target: { host: '10.0.0.2', port: 5353 },
      }),
      'portsplice: mapping 3 udp [::1]:53 -> 10.0.0.2:5353',
    );
  });

  test('JSON lines: the stats shape, bigints as strings', () => {
    const stats = { engine: 'splice', mappings: [tcpStats(1, { toTarget: 2n ** 60n }), udpStats(2)] };
    const line = jsonStatsLine(stats, new Date(0));
    assert.ok(!line.includes('\n'));
    const parsed = JSON.parse(line);
    assert.equal(parsed.time, '1970-01-01T00:00:00.000Z');
    assert.equal(parsed.engine, 'splice');
    assert.equal(parsed.mappings[0].bytes.toTarget, String(2n ** 60n));
    assert.equal(parsed.mappings[0].connections.accepted, 0);
    assert.deepEqual(parsed.mappings[1].dropped, udpStats(2).dropped);
    assert.equal(parsed.mappings[1].bytes.copied, '0');
  });

  test('startJsonLines writes a line at once and a last one on stop', () => {
    const written = [];
    const view = startJsonLines(
      fakeProxy({ engine: 'stream', mappings: [] }),
      { write: (t) => written.push(t) },
      60_000,
    );
    assert.equal(written.length, 1);
    view.stop();
    assert.equal(written.length, 2);
    for (const t of written) assert.deepEqual(JSON.parse(t).mappings, []);
  });
});

describe('live view', () => {
  const info = { version: '1.2.3', uptimeMs: 61_000, columns: 160, rows: 40 };

  test('rates come from the difference between snapshots', () => {
    const prev = { engine: 'splice', mappings: [tcpStats(1, { toTarget: 1000n, toClient: 0n })] };
    const now = {
      engine: 'splice',
      mappings: [tcpStats(1, { toTarget: 3000n, toClient: 500n }), tcpStats(2)],
    };
    const r = rates(prev, now, 2000);
    assert.deepEqual(r.get(1), { toTarget: 1000, toClient: 250 });
    assert.deepEqual(r.get(2), { toTarget: 0, toClient: 0 }, 'a new mapping has no rate yet');
  });

  test('one row per mapping with connections, flows and throughput', () => {
    const prev = { engine: 'splice', mappings: [tcpStats(1), udpStats(2)] };
    const now = {
      engine: 'splice',
      mappings: [
        tcpStats(1, { active: 7, accepted: 100, failed: 2, toTarget: 2048n * 1024n, toClient: 1024n }),
        udpStats(2, { toTarget: 512n, toClient: 512n }),
      ],
    };
    const lines = renderFrame(now, prev, 1000, info);
    assert.match(lines[0], /^portsplice 1\.2\.3 · splice engine · 2 mappings · up 00:01:01/);
    assert.match(lines[1], /^MAPPING\s+TARGET\s+ACTIVE\s+TOTAL\s+ERRORS\s+TO TARGET\s+TO CLIENT\s+BYTES$/);
    assert.match(
      lines[2],
      /^tcp\/127\.0\.0\.1:8001\s+10\.0\.0\.2:80\s+7\s+100\s+2\s+2\.0 MiB\/s\s+1\.0 KiB\/s\s+2\.0 MiB$/,
    );
    assert.match(lines[3], /^udp\/\[::\]:53\s+\[fd00::2\]:53\s+2\s+5\s+4\s+512 B\/s\s+512 B\/s\s+1\.0 KiB$/);
    assert.match(lines[4], /^total: 9 active/);
    assert.match(lines[5], /^s sort \(activity\) · e expand · q quit/);
    for (const line of lines) assert.ok(line.length < info.columns);
  });

  test('fits a small terminal: drops columns, shows the busiest mappings', () => {
    const mappings = [];
    for (let id = 1; id <= 100; id++) mappings.push(tcpStats(id));
    const prev = { engine: 'stream', mappings };
    const busy = tcpStats(77, { toTarget: 10n ** 6n });
    const now = { engine: 'stream', mappings: mappings.map((m) => (m.id === 77 ? busy : m)) };
    const small = { ...info, columns: 60, rows: 12 };
    const lines = renderFrame(now, prev, 1000, small);
    assert.ok(lines.length <= small.rows - 1, `${lines.length} lines fit ${small.rows} rows`);
    for (const line of lines) assert.ok(line.length <= small.columns - 1, `fits: ${line}`);
    assert.match(lines[2], /^tcp\/127\.0\.0\.1:8077\s/, 'the busy mapping comes first');
    assert.ok(lines.some((l) => /more rows not shown/.test(l)));
    assert.doesNotMatch(lines[1], /TARGET\s+ACTIVE|BYTES/, 'the least needed columns went first');
    assert.match(lines[1], /ERRORS/);
  });

  test('80 columns keep the ERRORS column whole, with long labels and large figures', () => {
    const huge = {
      ...tcpStats(1, {
        active: 123456,
        accepted: 98765432,
        failed: 4321,
        toTarget: 2n ** 50n,
        toClient: 2n ** 49n,
      }),
      name: 'a-very-long-mapping-name.example/with:every-allowed_char-and-more',
      listen: { host: '2001:db8:ffff:ffff:ffff:ffff:ffff:1', port: 65535 },
      target: { host: '2001:db8:ffff:ffff:ffff:ffff:ffff:2', port: 65535 },
    };
    const prev = {
      engine: 'splice',
      mappings: [{ ...huge, bytes: { ...huge.bytes, toTarget: 0n, toClient: 0n } }],
    };
    const now = { engine: 'splice', mappings: [huge, udpStats(2)] };
    for (const columns of [80, 70, 60]) {
      const lines = renderFrame(now, prev, 1000, { ...info, columns, rows: 24 });
      for (const line of lines) assert.ok(line.length <= columns - 1, `${columns} columns: ${line}`);
      const header = lines[1];
      const at = header.indexOf('ERRORS');
      assert.ok(at > 0, `ERRORS shown at ${columns} columns: ${header}`);
      // Right-aligned under its title: the figure ends where the title ends.
      const row = lines.find((l) => l.startsWith('a-very-long'));
      assert.ok(row, `the named row: ${lines.join('\n')}`);
      assert.equal(row.slice(at, at + 6).trim(), '4321', `${columns}: ${header}\n${row}`);
      assert.match(row, /…/, 'the label is cut, not the figures');
    }
  });

  test('a -p range is one row, summed, until expanded; sorted by activity or by errors', () => {
    const range = [1, 2, 3].map((id) =>
      tcpStats(id, { port: 8000 + id, active: id, accepted: 10 * id, failed: id === 3 ? 5 : 0 }),
    );
    const single = tcpStats(9, { port: 9000, active: 1, accepted: 1, toTarget: 4096n });
    const prev = { engine: 'splice', mappings: [...range, tcpStats(9, { port: 9000 })] };
    const now = { engine: 'splice', mappings: [...range, single] };
    const labels = new Map([
      [1, 'tcp/127.0.0.1:8001-8003'],
      [2, 'tcp/127.0.0.1:8001-8003'],
      [3, 'tcp/127.0.0.1:8001-8003'],
      [9, 'tcp/127.0.0.1:9000'],
    ]);
    const rows = (state) =>
      renderFrame(now, prev, 1000, { ...info, labels, state })
        .slice(2, -2)
        .map((l) => l.split(/\s{2,}/));
    let state = INITIAL_VIEW_STATE;
    // Folded, by activity: the mapping moving bytes first, then the range (6 open, 60 accepted, 5 errors).
    assert.deepEqual(rows(state), [
      ['tcp/127.0.0.1:9000', '10.0.0.2:80', '1', '1', '0', '4.0 KiB/s', '0 B/s', '4.0 KiB'],
      ['tcp/127.0.0.1:8001-8003', '10.0.0.2:80', '6', '60', '5', '0 B/s', '0 B/s', '0 B'],
    ]);
    state = handleKey(state, 's').state;
    assert.equal(state.sort, 'errors');
    assert.deepEqual(
      rows(state).map((r) => r[0]),
      ['tcp/127.0.0.1:8001-8003', 'tcp/127.0.0.1:9000'],
    );
    state = handleKey(state, 'e').state;
    assert.deepEqual(
      rows(state).map((r) => [r[0], r[4]]),
      [
        ['tcp/127.0.0.1:8003', '5'],
        ['tcp/127.0.0.1:9000', '0'],
        ['tcp/127.0.0.1:8002', '0'],
        ['tcp/127.0.0.1:8001', '0'],
      ],
    );
    assert.match(
      renderFrame(now, prev, 1000, { ...info, labels, state }).at(-1),
      /s sort \(errors\) · e fold/,
    );
  });

  test('keys: s sort, e expand, q and Ctrl-C quit, others nothing', () => {
    const s0 = INITIAL_VIEW_STATE;
    assert.deepEqual(s0, { sort: 'activity', expanded: false });
    assert.deepEqual(handleKey(s0, 's'), { state: { sort: 'errors', expanded: false } });
    assert.deepEqual(handleKey(handleKey(s0, 's').state, 'S'), { state: s0 });
    assert.deepEqual(handleKey(s0, 'e'), { state: { sort: 'activity', expanded: true } });
    assert.equal(handleKey(s0, 'q').quit, true);
    assert.equal(handleKey(s0, 'Q').quit, true);
    assert.equal(handleKey(s0, '\x03').quit, true);
    for (const key of ['x', ' ', '\r', '\x1b']) assert.deepEqual(handleKey(s0, key), { state: s0 });
  });

  test('during a drain the first line counts down', () => {
    const now = { engine: 'splice', mappings: [tcpStats(1, { active: 3 })] };
    const lines = renderFrame(now, now, 1000, { ...info, drain: { signal: 'SIGTERM', leftMs: 6200 } });
    assert.equal(lines[0], 'portsplice · DRAINING after SIGTERM: 7 s left · 3 open · q to quit now');
    const late = renderFrame(now, now, 1000, { ...info, drain: { signal: 'SIGINT', leftMs: -5 } });
    assert.match(late[0], /SIGINT: 0 s left/);
  });
});

describe('health', () => {
  const live = [1, 2].map((id) => ({
    key: String(id),
    spec: {
      options: { proto: 'tcp', listen: { port: 8000 + id }, target: { host: V4, port: 80 } },
      source: '-p',
    },
    mappings: [
      {
        id,
        proto: 'tcp',
        listen: { host: '0.0.0.0', port: 8000 + id },
        target: { host: V4, port: 80 },
      },
    ],
  }));
  test('ok only while running with every mapping listening', () => {
    assert.deepEqual(healthOf('running', undefined, 2, live, new Set([1, 2])), {
      ok: true,
      text: 'ok: 2 mappings listening',
    });
    assert.deepEqual(healthOf('starting', undefined, 5, live, new Set([1, 2])), {
      ok: false,
      text: 'starting: 2 of 5 mappings listening',
    });
    assert.deepEqual(healthOf('running', undefined, 2, live, new Set([1])), {
      ok: false,
      text: 'not listening: tcp 0.0.0.0:8002 -> 127.0.0.1:80',
    });
    assert.deepEqual(healthOf('stopping', 'SIGTERM', 2, live, new Set([1, 2])), {
      ok: false,
      text: 'stopping (SIGTERM): not accepting connections',
    });
  });
});

describe('metrics', () => {
  const servers = [];
  after(async () => {
    for (const s of servers) await stopMetricsServer(s);
  });

  test('metrics for TCP and UDP mappings, labelled by mapping, from one snapshot per scrape', async () => {
    let calls = 0;
    const stats = {
      engine: 'splice',
      threads: 2,
      mappings: [
        tcpStats(1, { active: 1, accepted: 3, failed: 1, toTarget: 2n ** 40n, toClient: 5n }),
        { ...udpStats(2, { toTarget: 7n }), name: 'dns' },
      ],
    };
    const proxy = {
      engine: 'splice',
      stats: () => {
        calls++;
        return stats;
      },
    };
    const metrics = createMetrics(proxy, '9.9.9');
    const text = await metrics.scrape();
    assert.equal(calls, 1, 'one stats() snapshot per scrape');
    const lines = text.split('\n');
    const has = (line) => assert.ok(lines.includes(line), `missing ${line}\n${text}`);
    const tcp = 'mapping="tcp/127.0.0.1:8001"';
    const udp = 'mapping="dns"';
    has(`portsplice_connections_accepted_total{${tcp}} 3`);
    has(`portsplice_connections_active{${tcp}} 1`);
    has(`portsplice_connections_failed_total{${tcp},reason="refused"} 1`);
    has(`portsplice_connections_failed_total{${tcp},reason="timeout"} 0`);
    has(`portsplice_bytes_total{${tcp},direction="to_target"} ${2 ** 40}`);
    has(`portsplice_bytes_total{${tcp},direction="to_client"} 5`);
    has(`portsplice_spliced_bytes_total{${tcp}} ${2 ** 40 + 5}`);
    has(`portsplice_copied_bytes_total{${tcp}} 0`);
    has(`portsplice_bytes_total{${udp},direction="to_target"} 7`);
    has(`portsplice_udp_flows_active{${udp}} 2`);
    has(`portsplice_udp_flows_created_total{${udp}} 5`);
    has(`portsplice_udp_flows_expired_total{${udp}} 3`);
    has(`portsplice_udp_flows_evicted_total{${udp}} 0`);
    has(`portsplice_udp_datagrams_total{${udp},direction="to_client"} 9`);
    has(`portsplice_udp_dropped_total{${udp},reason="refused"} 3`);
    has(`portsplice_udp_dropped_total{${udp},reason="queue_full"} 1`);
    has(`portsplice_mapping_info{${tcp},proto="tcp",listen="127.0.0.1:8001",target="10.0.0.2:80"} 1`);
    has(`portsplice_mapping_info{${udp},proto="udp",listen="[::]:53",target="[fd00::2]:53"} 1`);
    has('portsplice_mappings{proto="udp"} 1');
    has('portsplice_engine_threads 2');
    has('portsplice_build_info{version="9.9.9",engine="splice"} 1');
    has('# TYPE portsplice_udp_dropped_total counter');
    has('# TYPE process_resident_memory_bytes gauge');
    assert.ok(!text.includes(`portsplice_connections_active{${udp}}`), 'no TCP metrics for UDP mappings');
    for (const line of lines) {
      if (line && !line.startsWith('#')) assert.match(line, /^(portsplice|process)_/);
      const m = /^# TYPE (\S+) counter$/.exec(line);
      if (m) assert.match(m[1], /_total$/, `counter ${m[1]} ends with _total`);
    }

    // A removed mapping's series disappear; counters follow the engine's totals.
    stats.mappings = [tcpStats(1, { accepted: 4 })];
    const again = (await metrics.scrape()).split('\n');
    assert.ok(again.includes(`portsplice_connections_accepted_total{${tcp}} 4`));
    assert.ok(!again.some((l) => l.includes(udp)));
  });

  test('mappings sharing a label are summed into one series set', async () => {
    const stats = {
      engine: 'splice',
      mappings: [1, 2, 3].map((id) => tcpStats(id, { accepted: id, toTarget: BigInt(id) })),
    };
    const label = () => 'tcp/127.0.0.1:8001-8003';
    const text = await createMetrics(fakeProxy(stats), '1', { label }).scrape();
    const series = text.split('\n').filter((l) => l.startsWith('portsplice_connections_accepted_total'));
    assert.deepEqual(series, ['portsplice_connections_accepted_total{mapping="tcp/127.0.0.1:8001-8003"} 6']);
    assert.ok(
      text.includes(
        'portsplice_mapping_info{mapping="tcp/127.0.0.1:8001-8003",proto="tcp",listen="127.0.0.1:8001-8003",target="10.0.0.2:80"} 1',
      ),
      text,
    );
  });

  test('OpenMetrics and the Accept header', async () => {
    const metrics = createMetrics(
      fakeProxy({ engine: 'stream', mappings: [tcpStats(1, { accepted: 2 })] }),
      '1',
    );
    const om = await metrics.scrape(true);
    assert.match(om, /^# TYPE portsplice_connections_accepted counter$/m);
    assert.match(om, /^portsplice_connections_accepted_total\{mapping="tcp\/127\.0\.0\.1:8001"\} 2$/m);
    assert.ok(om.endsWith('# EOF\n'));
    assert.match(metrics.contentType(true), /^application\/openmetrics-text/);
    // prom-client renames counters when it writes OpenMetrics: the text format must not notice.
    assert.match(await metrics.scrape(), /^# TYPE portsplice_connections_accepted_total counter$/m);
    assert.match(metrics.contentType(false), /^text\/plain; version=0\.0\.4/);
    assert.equal(wantsOpenMetrics(undefined), false);
    assert.equal(wantsOpenMetrics('text/plain;version=0.0.4'), false);
    assert.equal(wantsOpenMetrics('application/openmetrics-text; version=1.0.0'), true);
    assert.equal(wantsOpenMetrics('Application/OpenMetrics-Text;q=0.5,text/plain'), true);
    assert.equal(wantsOpenMetrics('application/openmetrics-text;q=0,text/plain'), false);
  });

  test('nodejs_* families only when asked for', async () => {
    const proxy = fakeProxy({ engine: 'stream', mappings: [] });
    assert.doesNotMatch(await createMetrics(proxy, '1').scrape(), /^nodejs_/m);
    assert.match(
      await createMetrics(proxy, '1', { nodejs: true }).scrape(),
      /^nodejs_heap_size_used_bytes \d/m,
    );
  });

  test('served over HTTP at /metrics', async () => {
    const metrics = createMetrics(fakeProxy({ engine: 'stream', mappings: [tcpStats(1)] }), '1.0.0');
    const server = await startMetricsServer(metrics, '127.0.0.1', 0);
    servers.push(server);
    const { port } = server.address();
    const res = await httpGet(port);
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain/);
    assert.match(res.text, /portsplice_connections_accepted_total\{mapping="tcp\/127\.0\.0\.1:8001"/);
    const health = await httpGet(port, '/healthz');
    assert.deepEqual([health.status, health.text], [200, 'ok\n']);
    assert.equal((await httpGet(port, '/')).status, 200);
    assert.equal((await httpGet(port, '/other')).status, 404);
  });
});
