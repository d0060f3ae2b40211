/** One mapping the command opens, as parsed from `-p`, a config file or the flags. */
import type { MappingOptions } from '../types.js';
import { formatEndpoint } from './endpoint.js';

export interface MappingSpec {
  /** What `proxy.add()` gets (for the IPv6 twin of `dualStack`, with `listen.host` `::`). */
  options: MappingOptions;
  /** e.g. `-p 8000-8099:10.1.0.2:8000-8099` or `ports.json: mappings[2]`. */
  source: string;
  /**
   * Docker's host port range to one target port (`8000-8010:10.0.0.2:80`): listen on the first
   * port from `options.listen.port` to this one that is free.
   */
  lastHostPort?: number;
  /**
   * No host IP was given (`-p 8080:10.0.0.2:80`): like `docker run -p`, listen on `0.0.0.0`
   * and on `[::]` (IPV6_V6ONLY) on the same port; IPv4 only where the host has no IPv6.
   */
  dualStack?: boolean;
}

/** `tcp 0.0.0.0:8080 -> 10.0.0.2:80`, with `and [::]` and port ranges where they apply. */
export function describeSpec(spec: MappingSpec): string {
  const { proto, listen, target } = spec.options;
  const port = spec.lastHostPort === undefined ? `${listen.port}` : `${listen.port}-${spec.lastHostPort}`;
  const where = formatEndpoint(listen.host ?? '0.0.0.0', port);
  return `${proto} ${where}${spec.dualStack ? ` and [::]:${port}` : ''} -> ${formatEndpoint(target.host, target.port)}`;
}
