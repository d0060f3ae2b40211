/**
 * Prometheus metrics for `--metrics HOST:PORT`, with prom-client: metrics that read
 * `proxy.stats()` when scraped (one snapshot per scrape), served over HTTP at `/metrics` in the
 * Prometheus text format, or in OpenMetrics when the scraper's Accept header asks for it, and a
 * health check at `/healthz`.
 *
 * Every mapping series carries one label, `mapping`: a stable label (the mapping's name, else
 * `proto/listen`; see groups.ts), never its id, which depends on the order mappings opened. The
 * mappings that share a label (the ports of one `-p` range) are summed into one series, so the
 * series count does not grow with the ports of a range. `portsplice_mapping_info` tells each
 * label's protocol, listen address and target.
 */
import { createRequire } from 'node:module';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  Counter,
  Gauge,
  Registry,
  collectDefaultMetrics,
  openMetricsContentType,
  type OpenMetricsContentType,
  type PrometheusContentType,
} from 'prom-client';
import type {
  MappingStats,
  Proto,
  PortspliceProxy,
  ProxyStats,
  TcpMappingStats,
  UdpMappingStats,
} from '../types.js';
import { formatEndpoint } from './endpoint.js';
import { endpointRange, mappingLabel } from './groups.js';

/** One series of a metric: extra labels (e.g. direction) and the value. */
type Sample = [extra: Record<string, string>, value: number | bigint];

interface MetricDef {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  /** Label names beyond `mapping`. */
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
    help: 'TCP connections whose target could not be reached, by reason (refused, timeout, unreachable, other).',
    type: 'counter',
    proto: 'tcp',
    extra: ['reason'],
    samples: (m) => Object.entries(tcp(m).connections.failedBy).map(([reason, n]): Sample => [{ reason }, n]),
  },
  {
    name: 'portsplice_proxy_headers_sent_total',
    help: 'PROXY protocol headers sent to the target (mappings with proxyProtocol).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).proxyHeaders.sent]],
  },
  {
    name: 'portsplice_proxy_headers_received_total',
    help: 'PROXY protocol headers read from clients (mappings with acceptProxyProtocol).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).proxyHeaders.received]],
  },
  {
    name: 'portsplice_proxy_headers_rejected_total',
    help: 'Clients reset for a bad, oversized or late PROXY protocol header.',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).proxyHeaders.rejected]],
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
    name: 'portsplice_pipes_in_use',
    help: "Splice engine: pipes held now by the mapping's connections.",
    type: 'gauge',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).pipes.inUse]],
  },
  {
    name: 'portsplice_pipe_fallbacks_total',
    help: 'Splice engine: bursts copied through user space because no pipe could be had (maxPipes or the fd limit).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).pipes.fallbacks]],
  },
  {
    name: 'portsplice_events_dropped_total',
    help: 'Failure events dropped because nobody read them in time (the library queue keeps 1024).',
    type: 'counter',
    proto: 'tcp',
    samples: (m) => [[{}, tcp(m).events.dropped]],
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

/** What `/healthz` answers: 200 with `ok`, else 503; `text` is the body's one line. */
export interface Health {
  ok: boolean;
  text: string;
}

export interface MetricsOptions {
  /** Each mapping's `mapping` label (default: its name, else `proto/listen`). */
  label?: (m: MappingStats) => string;
  /** Also prom-client's Node.js families (`nodejs_*`: heap, GC, event loop); off by default. */
  nodejs?: boolean;
  /** The health check (default: healthy until the proxy is closed). */
  health?: () => Health;
}

export interface Metrics {
  /** The exposition text, from one stats snapshot: OpenMetrics when `openMetrics`. */
  scrape(openMetrics?: boolean): Promise<string>;
  contentType(openMetrics: boolean): string;
  health(): Health;
}

/** The mappings that share one `mapping` label. */
interface Group {
  proto: Proto;
  members: MappingStats[];
}

/** A snapshot's mappings by label, in order of first appearance. */
function groupStats(stats: ProxyStats, label: (m: MappingStats) => string): Map<string, Group> {
  const groups = new Map<string, Group>();
  for (const m of stats.mappings) {
    const key = label(m);
    const group = groups.get(key);
    if (group) group.members.push(m);
    else groups.set(key, { proto: m.proto, members: [m] });
  }
  return groups;
}

const requireHere = createRequire(import.meta.url);
/**
 * The standard `process_*` families (CPU, start time, resident and virtual memory, open and
 * maximum descriptors), unprefixed as stock dashboards expect, without the rest of
 * collectDefaultMetrics(): its event-loop monitor alone wakes an idle proxy 100 times a second.
 * prom-client has no public entry for single collectors; test/metrics.test.mjs checks these
 * paths still give the families.
 */
const PROCESS_COLLECTORS = [
  'processCpuTotal',
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
];

function collectProcessMetrics(registry: object): void {
  for (const name of PROCESS_COLLECTORS) {
    const collect = requireHere(`prom-client/lib/metrics/${name}`) as (r: object, config: object) => void;
    collect(registry, {});
  }
}

/** A registry with portsplice's metrics and the process metrics. */
export function createMetrics(
  proxy: PortspliceProxy,
  version: string,
  options: MetricsOptions = {},
): Metrics {
  const label = options.label ?? mappingLabel;
  // Set for the duration of a scrape, so that every metric reads the same snapshot.
  let snapshot: { stats: ProxyStats; groups: Map<string, Group> } | undefined;
  const current = () => {
    if (snapshot) return snapshot;
    const stats = proxy.stats();
    return { stats, groups: groupStats(stats, label) };
  };

  // One registry per format: prom-client renames a counter in place when it writes
  // OpenMetrics (dropping `_total` from the family name), so one registry cannot serve both.
  const register = (registry: Registry<PrometheusContentType> | Registry<OpenMetricsContentType>) => {
    const registers = [registry];
    for (const def of METRICS) {
      const labelNames = ['mapping', ...(def.extra ?? [])];
      const fill = (set: (labels: Record<string, string>, value: number) => void) => {
        for (const [name, group] of current().groups) {
          if (def.proto !== undefined && group.proto !== def.proto) continue;
          // The members of a range summed, series by series.
          const sums = new Map<string, [Record<string, string>, number]>();
          for (const m of group.members) {
            for (const [extra, value] of def.samples(m)) {
              const key = JSON.stringify(extra);
              const sum = sums.get(key);
              if (sum) sum[1] += Number(value);
              else sums.set(key, [extra, Number(value)]);
            }
          }
          for (const [extra, value] of sums.values()) set({ mapping: name, ...extra }, value);
        }
      };
      if (def.type === 'counter') {
        new Counter({
          name: def.name,
          help: def.help,
          labelNames,
          registers,
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
          registers,
          collect() {
            this.reset();
            fill((labels, value) => this.set(labels, value));
          },
        });
      }
    }
    new Gauge({
      name: 'portsplice_mapping_info',
      help: 'Always 1: what each mapping label stands for (protocol, listen address and target; a range as host:first-last).',
      labelNames: ['mapping', 'proto', 'listen', 'target'],
      registers,
      collect() {
        this.reset();
        for (const [name, { proto, members }] of current().groups) {
          const [first] = members;
          this.set(
            {
              mapping: name,
              proto,
              listen: endpointRange(
                first!.listen.host,
                members.map((m) => m.listen.port),
              ),
              target: endpointRange(
                first!.target.host,
                members.map((m) => m.target.port),
              ),
            },
            1,
          );
        }
      },
    });
    new Gauge({
      name: 'portsplice_mappings',
      help: 'Listening ports (mappings), by protocol; a range counts each of its ports.',
      labelNames: ['proto'],
      registers,
      collect() {
        const n = { tcp: 0, udp: 0 };
        for (const m of current().stats.mappings) n[m.proto]++;
        this.set({ proto: 'tcp' }, n.tcp);
        this.set({ proto: 'udp' }, n.udp);
      },
    });
    new Gauge({
      name: 'portsplice_engine_threads',
      help: 'Native engine threads running (the splice engine; 0 for the stream engine).',
      registers,
      collect() {
        this.set(current().stats.threads ?? 0);
      },
    });
    new Gauge({
      name: 'portsplice_build_info',
      help: 'Always 1; the labels tell the version and the engine.',
      labelNames: ['version', 'engine'],
      registers,
      collect() {
        this.reset();
        this.set({ version, engine: proxy.engine }, 1);
      },
    });
    if (options.nodejs) collectDefaultMetrics({ register: registry });
    else collectProcessMetrics(registry);
  };
  const prometheus = new Registry<PrometheusContentType>();
  const openMetrics = new Registry<OpenMetricsContentType>();
  openMetrics.setContentType(openMetricsContentType);
  register(prometheus);
  register(openMetrics);

  return {
    async scrape(asOpenMetrics = false) {
      const stats = proxy.stats();
      snapshot = { stats, groups: groupStats(stats, label) };
      // prom-client calls every collect() synchronously when metrics() starts.
      const text = (asOpenMetrics ? openMetrics : prometheus).metrics();
      snapshot = undefined;
      return text;
    },
    contentType(asOpenMetrics: boolean) {
      return (asOpenMetrics ? openMetrics : prometheus).contentType;
    },
    health:
      options.health ??
      (() =>
        proxy.closed ? { ok: false, text: 'unavailable: the proxy is closed' } : { ok: true, text: 'ok' }),
  };
}

/**
 * Whether an Accept header asks for OpenMetrics (as Prometheus does, listing it first), with a
 * nonzero quality. Anything else gets the Prometheus text format, which every scraper reads.
 */
export function wantsOpenMetrics(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.split(',').some((part) => {
    const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    if (type !== 'application/openmetrics-text') return false;
    const q = params.find((p) => p.startsWith('q='));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

/**
 * Serves `GET /metrics`, `/healthz` (and `/`); resolves once listening, rejects if it cannot
 * bind.
 */
export async function startMetricsServer(metrics: Metrics, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const body = (text: string) => (req.method === 'HEAD' ? undefined : text);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(
        body('<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a></body></html>\n'),
      );
      return;
    }
    if (path === '/healthz') {
      const health = metrics.health();
      res.writeHead(health.ok ? 200 : 503, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(body(`${health.text}\n`));
      return;
    }
    if (path !== '/metrics') {
      res
        .writeHead(404, { 'content-type': 'text/plain' })
        .end('not found; metrics are at /metrics, the health check at /healthz\n');
      return;
    }
    const openMetrics = wantsOpenMetrics(req.headers.accept);
    metrics.scrape(openMetrics).then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.contentType(openMetrics), vary: 'Accept' });
        res.end(body(text));
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
