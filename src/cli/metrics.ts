/**
 * Prometheus metrics for `--metrics HOST:PORT`, with prom-client: a dedicated registry whose
 * metrics read `proxy.stats()` when scraped (one snapshot per scrape), served over HTTP at
 * `/metrics`. Every mapping's series carry the labels `mapping` (its id), `proto`, `listen`
 * and `target`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { MappingStats, Proxy, ProxyStats, TcpMappingStats, UdpMappingStats } from '../types.js';
import { formatEndpoint } from './args.js';

const LABELS = ['mapping', 'proto', 'listen', 'target'] as const;
type Label = (typeof LABELS)[number];
type Labels = Record<Label, string>;

function labelsOf(m: MappingStats): Labels {
  return {
    mapping: String(m.id),
    proto: m.proto,
    listen: formatEndpoint(m.listen.host, m.listen.port),
    target: formatEndpoint(m.target.host, m.target.port),
  };
}

/** One series of a metric: extra labels (e.g. direction) and the value. */
type Sample = [extra: Record<string, string>, value: number | bigint];

interface MetricDef {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  /** Label names beyond LABELS. */
  extra?: string[];
  /** Only mappings of this protocol have the metric. */
  proto?: 'tcp' | 'udp';
  samples(m: MappingStats): Sample[];
}

const tcp = (m: MappingStats) => m as TcpMappingStats;
const udp = (m: MappingStats) => m as UdpMappingStats;

const METRICS: MetricDef[] = [
  {
    name: 'portsplice_connections_accepted_total',
    help: 'TCP client connections accepted.',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).connections.accepted]],
  },
  {
    name: 'portsplice_connections_active',
    help: 'TCP connections open now.',
    type: 'gauge',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).connections.active]],
  },
  {
    name: 'portsplice_connections_failed_total',
    help: 'TCP connections whose target could not be reached (refused, unreachable, timed out).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).connections.failed]],
  },
  {
    name: 'portsplice_bytes_total',
    help: 'Payload bytes forwarded, by direction (to_target, to_client).',
    type: 'counter',
    extra: ['direction'],
    samples: (m) => [
      [{ direction: 'to_target' }, m.bytes.toTarget],
      [{ direction: 'to_client' }, m.bytes.toClient],
    ],
  },
  {
    name: 'portsplice_spliced_bytes_total',
    help: 'Of the bytes forwarded, those moved by splice(2) without entering user space.',
    type: 'counter',
    samples: (m) => [[{}, m.bytes.spliced]],
  },
  {
    name: 'portsplice_copied_bytes_total',
    help: 'Of the bytes forwarded, those copied through a user-space buffer.',
    type: 'counter',
    samples: (m) => [[{}, m.bytes.copied]],
  },
  {
    name: 'portsplice_udp_flows_active',
    help: 'UDP flows (client address and port) open now.',
    type: 'gauge',
    proto: 'udp',
    samples: (m) => [[{}, udp(m).flows.active]],
  },
  {
    name: 'portsplice_udp_flows_created_total',
    help: 'UDP flows created.',
    type: 'counter',
    proto: 'udp',
    samples: (m) => [[{}, udp(m).flows.created]],
  },
  {
    name: 'portsplice_udp_flows_expired_total',
    help: 'UDP flows closed after the UDP timeout with no datagram in either direction.',
    type: 'counter',
    proto: 'udp',
    samples: (m) => [[{}, udp(m).flows.expired]],
  },
  {
    name: 'portsplice_udp_flows_evicted_total',
    help: 'UDP flows closed to make room under the flow limit.',
    type: 'counter',
    proto: 'udp',
    samples: (m) => [[{}, udp(m).flows.evicted]],
  },
  {
    name: 'portsplice_udp_datagrams_total',
    help: 'UDP datagrams forwarded, by direction (to_target, to_client).',
    type: 'counter',
    proto: 'udp',
    extra: ['direction'],
    samples: (m) => [
      [{ direction: 'to_target' }, udp(m).datagrams.toTarget],
      [{ direction: 'to_client' }, udp(m).datagrams.toClient],
    ],
  },
  {
    name: 'portsplice_udp_dropped_total',
    help: 'UDP datagrams not forwarded, by reason (no_flow, queue_full, refused, truncated, other).',
    type: 'counter',
    proto: 'udp',
    extra: ['reason'],
    samples: (m) => {
      const d = udp(m).dropped;
      return [
        [{ reason: 'no_flow' }, d.noFlow],
        [{ reason: 'queue_full' }, d.queueFull],
        [{ reason: 'refused' }, d.refused],
        [{ reason: 'truncated' }, d.truncated],
        [{ reason: 'other' }, d.other],
      ];
    },
  },
  {
    name: 'portsplice_connections_limit_reached_total',
    help: 'Times a TCP mapping filled up to maxConnections (new connections then wait in the backlog).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).connections.limitReached]],
  },
  {
    name: 'portsplice_connections_idle_closed_total',
    help: 'TCP connections reset after idleTimeoutMs with no byte in either direction.',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).connections.idleClosed]],
  },
];

export interface Metrics {
  registry: Registry;
  /** The exposition text, from one stats snapshot. */
  scrape(): Promise<string>;
}

/** A registry with portsplice's metrics and the process metrics (all prefixed `portsplice_`). */
export function createMetrics(proxy: Proxy, version: string): Metrics {
  const registry = new Registry();
  // Set for the duration of a scrape, so that every metric reads the same snapshot.
  let snapshot: ProxyStats | undefined;
  const stats = () => snapshot ?? proxy.stats();

  for (const def of METRICS) {
    const labelNames = [...LABELS, ...(def.extra ?? [])];
    const fill = (set: (labels: Record<string, string>, value: number) => void) => {
      for (const m of stats().mappings) {
        if (def.proto !== undefined && m.proto !== def.proto) continue;
        const base = labelsOf(m);
        for (const [extra, value] of def.samples(m)) set({ ...base, ...extra }, Number(value));
      }
    };
    if (def.type === 'counter') {
      new Counter({
        name: def.name,
        help: def.help,
        labelNames,
        registers: [registry],
        collect() {
          // Counters here mirror the engine's totals: start from zero and add each total, so a
          // removed mapping's series disappear.
          this.reset();
          fill((labels, value) => this.inc(labels, value));
        },
      });
    } else {
      new Gauge({
        name: def.name,
        help: def.help,
        labelNames,
        registers: [registry],
        collect() {
          this.reset();
          fill((labels, value) => this.set(labels, value));
        },
      });
    }
  }
  new Gauge({
    name: 'portsplice_mappings',
    help: 'Mappings listening, by protocol.',
    labelNames: ['proto'],
    registers: [registry],
    collect() {
      const n = { tcp: 0, udp: 0 };
      for (const m of stats().mappings) n[m.proto]++;
      this.set({ proto: 'tcp' }, n.tcp);
      this.set({ proto: 'udp' }, n.udp);
    },
  });
  new Gauge({
    name: 'portsplice_build_info',
    help: 'Always 1; the labels tell the version and the engine.',
    labelNames: ['version', 'engine'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ version, engine: proxy.engine }, 1);
    },
  });
  collectDefaultMetrics({ register: registry, prefix: 'portsplice_' });

  return {
    registry,
    async scrape() {
      snapshot = proxy.stats();
      // prom-client calls every collect() synchronously when metrics() starts.
      const text = registry.metrics();
      snapshot = undefined;
      return text;
    },
  };
}

/** Serves `GET /metrics` (and `/`); resolves once listening, rejects if it cannot bind. */
export async function startMetricsServer(metrics: Metrics, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html><body><a href="/metrics">/metrics</a></body></html>\n');
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found; metrics are at /metrics\n');
      return;
    }
    metrics.scrape().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`);
      },
    );
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

/** The address a server listens on, as HOST:PORT. */
export function serverAddress(server: http.Server): string {
  const a = server.address() as AddressInfo;
  return formatEndpoint(a.address, a.port);
}

/** Stops listening and drops keep-alive connections; bounded by the caller's shutdown. */
export function stopMetricsServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
