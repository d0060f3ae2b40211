/**
 * The CLI's running set of mappings and its reload (SIGHUP): a mapping whose options are
 * unchanged keeps its listener and its connections, a removed one drains (its listener closes
 * at once, its connections get the drain timeout), a new one opens. If a new one cannot open,
 * the reload is undone: the mappings it opened close, the ones it removed open again, and the
 * running config stays as it was.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Mapping, PortspliceProxy } from '../types.js';
import { describeSpec, type MappingSpec } from './spec.js';

/** Tries of a new mapping on the port of one being removed (see openMapping). */
const TAKEOVER_TRIES = 50;
const TAKEOVER_WAIT_MS = 10;

/** A spec that is open: one listener, or two for a `dualStack` one (0.0.0.0 and [::]). */
export interface LiveMapping {
  key: string;
  spec: MappingSpec;
  mappings: Mapping[];
}

/** Errors of an IPv6 listen address on a host without IPv6 (ipv6.disable=1: no AF_INET6 sockets). */
const NO_IPV6 = new Set(['EAFNOSUPPORT', 'EADDRNOTAVAIL', 'EPROTONOSUPPORT']);
/** Tries of a free port (0) that must be free on both IPv4 and IPv6. */
const DUAL_STACK_TRIES = 8;

/** JSON with sorted keys: the same options in another order are the same mapping. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** One key per mapping: its options, and which occurrence of them it is. */
export function mappingKeys(specs: readonly MappingSpec[]): string[] {
  const seen = new Map<string, number>();
  return specs.map((spec) => {
    // How it listens is part of it: 8080:... (IPv4 and IPv6) is not 0.0.0.0:8080:...
    const base = canonical({
      options: spec.options,
      dualStack: spec.dualStack,
      lastHostPort: spec.lastHostPort,
    });
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return `${base}#${n}`;
  });
}

/** Whether `spec` may listen where one of `removed` listened (same protocol and port). */
function takesOverFrom(removed: readonly LiveMapping[], spec: MappingSpec): boolean {
  const { proto, listen } = spec.options;
  const last = spec.lastHostPort ?? listen.port;
  return removed.some((m) =>
    m.mappings.some((x) => x.proto === proto && x.listen.port >= listen.port && x.listen.port <= last),
  );
}

/**
 * Adds a mapping. When it takes over the port of a mapping being removed, that listener is
 * closed by an engine thread a moment after remove() is called, so EADDRINUSE is retried for
 * up to TAKEOVER_TRIES * TAKEOVER_WAIT_MS.
 */
async function openMapping(
  proxy: PortspliceProxy,
  options: MappingSpec['options'],
  takesOver: boolean,
): Promise<Mapping> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await proxy.add(options);
    } catch (err) {
      if (!takesOver || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= TAKEOVER_TRIES)
        throw err;
      await sleep(TAKEOVER_WAIT_MS);
    }
  }
}

const code = (err: unknown) => (err as NodeJS.ErrnoException).code ?? '';

/**
 * Opens a spec: its one listener, or the first free port of its host range, and for a
 * `dualStack` spec the same port on [::] (IPV6_V6ONLY) too, as dockerd does for `-p 8080:80`.
 * A picked port (0 or a range) that is taken on [::] is given up on both and the next one
 * tried. Without IPv6 on the host the spec listens on IPv4 only, and `note` says so.
 */
export async function openSpec(
  proxy: PortspliceProxy,
  spec: MappingSpec,
  takesOver: boolean,
  note: (line: string) => void = () => {},
): Promise<Mapping[]> {
  const first = spec.options.listen.port;
  const last = spec.lastHostPort ?? first;
  const tries = first === 0 && spec.dualStack ? DUAL_STACK_TRIES : last - first + 1;
  for (let i = 0; ; i++) {
    const port = first === 0 ? 0 : first + i;
    const more = i + 1 < tries;
    let v4: Mapping;
    try {
      v4 = await openMapping(proxy, { ...spec.options, listen: { ...spec.options.listen, port } }, takesOver);
    } catch (err) {
      if (code(err) === 'EADDRINUSE' && more) continue;
      throw err;
    }
    if (!spec.dualStack) return [v4];
    const v6 = { ...spec.options, listen: { host: '::', port: v4.listen.port }, ipv6Only: true };
    try {
      return [v4, await openMapping(proxy, v6, takesOver)];
    } catch (err) {
      if (NO_IPV6.has(code(err))) {
        note(`${describeSpec(spec)}: IPv6 is not available here (${code(err)}); listening on IPv4 only`);
        return [v4];
      }
      await proxy.remove(v4);
      if (code(err) === 'EADDRINUSE' && more && (first === 0 || spec.lastHostPort !== undefined)) continue;
      throw err;
    }
  }
}

export interface ReloadOutcome {
  kept: number;
  added: LiveMapping[];
  removed: LiveMapping[];
  /** Resolves once every removed listener has drained, with how many connections were reset. */
  drained: Promise<{ mapping: Mapping; reset: number }[]>;
}

/**
 * Brings the proxy from `live` to `wanted`; resolves with the new live set and what changed, or
 * rejects (with the live set unchanged in effect) when a new mapping cannot open.
 */
export async function applyMappings(
  proxy: PortspliceProxy,
  live: readonly LiveMapping[],
  wanted: readonly MappingSpec[],
  drainTimeoutMs: number,
  note?: (line: string) => void,
): Promise<{ live: LiveMapping[]; outcome: ReloadOutcome }> {
  const wantedKeys = mappingKeys(wanted);
  const liveByKey = new Map(live.map((m) => [m.key, m]));
  const wantedSet = new Set(wantedKeys);
  const removed = live.filter((m) => !wantedSet.has(m.key));
  const toAdd = wanted
    .map((spec, i) => ({ spec, key: wantedKeys[i]! }))
    .filter(({ key }) => !liveByKey.has(key));

  // Close the removed listeners first: a changed mapping may keep its port.
  const drains = removed.flatMap((m) =>
    m.mappings.map((mapping) =>
      proxy.remove(mapping, { drainTimeoutMs }).then(({ reset }) => ({ mapping, reset })),
    ),
  );
  const added: LiveMapping[] = [];
  try {
    for (const { spec, key } of toAdd) {
      const takesOver = takesOverFrom(removed, spec);
      try {
        added.push({ key, spec, mappings: await openSpec(proxy, spec, takesOver, note) });
      } catch (err) {
        throw new Error(
          `cannot listen on ${describeSpec(spec)} (${spec.source}): ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    }
  } catch (err) {
    // Undo: close what this reload opened, reopen what it removed (their old connections go
    // on draining); a failure to reopen is part of the error.
    await Promise.allSettled(added.flatMap((m) => m.mappings.map((mapping) => proxy.remove(mapping))));
    const problems: string[] = [];
    const restored: LiveMapping[] = [];
    for (const m of removed) {
      try {
        restored.push({ ...m, mappings: await openSpec(proxy, m.spec, true, note) });
      } catch (again) {
        problems.push(`cannot reopen ${describeSpec(m.spec)}: ${(again as Error).message}`);
      }
    }
    void Promise.allSettled(drains);
    const kept = live.filter((m) => wantedSet.has(m.key));
    const error = new Error([(err as Error).message, ...problems].join('; '), { cause: err }) as Error & {
      live: LiveMapping[];
    };
    error.live = [...kept, ...restored];
    throw error;
  }

  const byKey = new Map([...live, ...added].map((m) => [m.key, m]));
  return {
    live: wantedKeys.map((key) => byKey.get(key)!),
    outcome: { kept: wanted.length - added.length, added, removed, drained: Promise.all(drains) },
  };
}
