/**
 * How the command names its mappings to people and to Prometheus: a mapping's label is its
 * `name`, else `proto/listen` (stable across restarts, unlike its id), and the ports of one
 * `-p` range share one label (`tcp/0.0.0.0:8000-8099`), so that a 10,000-port range is one
 * row in the live view and one series set in the metrics rather than 10,000.
 */
import type { Mapping, Proto } from '../types.js';
import { formatEndpoint } from './endpoint.js';
import type { LiveMapping } from './reload.js';

/** `host:port`, or `host:first-last` for several ports. */
export function endpointRange(host: string, ports: readonly number[]): string {
  let first = Infinity;
  let last = -Infinity;
  for (const p of ports) {
    first = Math.min(first, p);
    last = Math.max(last, p);
  }
  return first === last ? formatEndpoint(host, first) : `${formatEndpoint(host, first)}-${last}`;
}

/** One mapping's own label: its name, else `proto/listen`. */
export function mappingLabel(m: {
  name?: string;
  proto: Proto;
  listen: { host: string; port: number };
}): string {
  return m.name ?? `${m.proto}/${formatEndpoint(m.listen.host, m.listen.port)}`;
}

/**
 * The label of each running mapping, by id. The mappings of one `-p` range (one spec source
 * that made several mappings) share `proto/host:first-last` unless `perPort`.
 */
export function mappingLabels(live: readonly LiveMapping[], perPort: boolean): Map<number, string> {
  // A spec without a host IP listens on IPv4 and IPv6: one group per address, so each family
  // keeps its own label.
  const bySource = new Map<string, Mapping[]>();
  for (const { spec, mappings } of live) {
    for (const mapping of mappings) {
      const key = `${spec.source}\0${mapping.listen.host}`;
      const group = bySource.get(key);
      if (group) group.push(mapping);
      else bySource.set(key, [mapping]);
    }
  }
  const labels = new Map<number, string>();
  for (const group of bySource.values()) {
    if (group.length === 1 || perPort) {
      for (const m of group) labels.set(m.id, mappingLabel(m));
      continue;
    }
    const first = group[0]!;
    const label = `${first.proto}/${endpointRange(
      first.listen.host,
      group.map((m) => m.listen.port),
    )}`;
    for (const m of group) labels.set(m.id, label);
  }
  return labels;
}
