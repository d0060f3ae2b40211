// Unit tests of what the CLI prints (dist/cli/view.js) and of its Prometheus metrics
// (dist/cli/metrics.js), on hand-made stats snapshots of TCP and UDP mappings.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  formatBytes,
  formatRate,
  formatDuration,
  jsonStatsLine,
  renderFrame,
  rates,
  startupLine,
  startJsonLines,
} from '../dist/cli/view.js';
import { createMetrics, startMetricsServer, stopMetricsServer } from '../dist/cli/metrics.js';
import { httpGet } from './cli-helpers.mjs';

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
    bytes: { toTarget, toClient, spliced: toTarget + toClient, copied: 0n },
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
    assert.match(
      lines[1],
      /^ID\s+PROTO\s+LISTEN\s+TARGET\s+ACTIVE\s+TOTAL\s+ERRORS\s+TO TARGET\s+TO CLIENT\s+BYTES$/,
    );
    assert.match(
      lines[2],
      /^1\s+tcp\s+127\.0\.0\.1:8001\s+10\.0\.0\.2:80\s+7\s+100\s+2\s+2\.0 MiB\/s\s+1\.0 KiB\/s\s+2\.0 MiB$/,
    );
    assert.match(
      lines[3],
      /^2\s+udp\s+\[::\]:53\s+\[fd00::2\]:53\s+2\s+5\s+4\s+512 B\/s\s+512 B\/s\s+1\.0 KiB$/,
    );
    assert.match(lines[4], /^total: 9 active/);
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
    assert.ok(
      lines.some((l) => /^77\s/.test(l)),
      'the busy mapping is shown',
    );
    assert.ok(lines.some((l) => /more mappings not shown/.test(l)));
    assert.doesNotMatch(lines[1], /TOTAL|ERRORS/, 'the least needed columns went first');
  });
});

describe('metrics', () => {
  const servers = [];
  after(async () => {
    for (const s of servers) await stopMetricsServer(s);
  });

  test('portsplice_ metrics for TCP and UDP mappings, labelled, from one snapshot per scrape', async () => {
    let calls = 0;
    const stats = {
      engine: 'splice',
      mappings: [
        tcpStats(1, { active: 1, accepted: 3, failed: 1, toTarget: 2n ** 40n, toClient: 5n }),
        udpStats(2, { toTarget: 7n }),
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
    const tcp = 'mapping="1",proto="tcp",listen="127.0.0.1:8001",target="10.0.0.2:80"';
    const udp = 'mapping="2",proto="udp",listen="[::]:53",target="[fd00::2]:53"';
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
    has('portsplice_mappings{proto="udp"} 1');
    has('portsplice_build_info{version="9.9.9",engine="splice"} 1');
    has('# TYPE portsplice_udp_dropped_total counter');
    assert.ok(!text.includes(`portsplice_connections_active{${udp}}`), 'no TCP metrics for UDP mappings');
    for (const line of lines) {
      if (line && !line.startsWith('#')) assert.match(line, /^portsplice_/);
      const m = /^# TYPE (\S+) counter$/.exec(line);
      if (m) assert.match(m[1], /_total$/, `counter ${m[1]} ends with _total`);
    }

    // A removed mapping's series disappear; counters follow the engine's totals.
    stats.mappings = [tcpStats(1, { accepted: 4 })];
    const again = (await metrics.scrape()).split('\n');
    assert.ok(again.includes(`portsplice_connections_accepted_total{${tcp}} 4`));
    assert.ok(!again.some((l) => l.includes('mapping="2"')));
  });

  test('served over HTTP at /metrics', async () => {
    const metrics = createMetrics(fakeProxy({ engine: 'stream', mappings: [tcpStats(1)] }), '1.0.0');
    const server = await startMetricsServer(metrics, '127.0.0.1', 0);
    servers.push(server);
    const { port } = server.address();
    const res = await httpGet(port);
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain/);
    assert.match(res.text, /portsplice_connections_accepted_total\{mapping="1"/);
    assert.equal((await httpGet(port, '/')).status, 200);
    assert.equal((await httpGet(port, '/other')).status, 404);
  });
});
