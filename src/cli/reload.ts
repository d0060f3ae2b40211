/**
 * The CLI's running set of mappings and its reload (SIGHUP): a mapping whose options are
 * unchanged keeps its listener and its connections, a removed one drains (its listener closes
 * at once, its connections get the drain timeout), a new one opens. If a new one cannot open,
 * the reload is undone: the mappings it opened close, the ones it removed open again, and the
 * running config stays as it was.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Mapping, PortspliceProxy } from '../types.js';
import { formatEndpoint, type MappingSpec } from './args.js';

/** Tries of a new mapping on the port of one being removed (see openMapping). */
const TAKEOVER_TRIES = 50;
const TAKEOVER_WAIT_MS = 10;

export interface LiveMapping {
  key: string;
  spec: MappingSpec;
  mapping: Mapping;
}

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
    const base = canonical(spec.options);
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    return `${base}#${n}`;
  });
}

export function describeSpec(spec: MappingSpec): string {
  const { proto, listen, target } = spec.options;
  return (
    `${proto} ${formatEndpoint(listen.host ?? '0.0.0.0', listen.port)} -> ` +
    `${formatEndpoint(target.host, target.port)}`
  );
}

function sameListener(a: MappingSpec, b: MappingSpec): boolean {
  const x = a.options;
  const y = b.options;
  return (
    x.proto === y.proto &&
    (x.listen.host ?? '0.0.0.0') === (y.listen.host ?? '0.0.0.0') &&
    x.listen.port === y.listen.port
  );
}

/**
 * Adds a mapping. When it takes over the port of a mapping being removed, that listener is
 * closed by an engine thread a moment after remove() is called, so EADDRINUSE is retried for
 * up to TAKEOVER_TRIES * TAKEOVER_WAIT_MS.
 */
async function openMapping(proxy: PortspliceProxy, spec: MappingSpec, takesOver: boolean): Promise<Mapping> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await proxy.add(spec.options);
    } catch (err) {
      if (!takesOver || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= TAKEOVER_TRIES)
        throw err;
      await sleep(TAKEOVER_WAIT_MS);
    }
  }
}

export interface ReloadOutcome {
  kept: number;
  added: LiveMapping[];
  removed: LiveMapping[];
  /** Resolves once every removed mapping has drained, with how many connections were reset. */
  drained: Promise<{ mapping: LiveMapping; reset: number }[]>;
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
): Promise<{ live: LiveMapping[]; outcome: ReloadOutcome }> {
  const wantedKeys = mappingKeys(wanted);
  const liveByKey = new Map(live.map((m) => [m.key, m]));
  const wantedSet = new Set(wantedKeys);
  const removed = live.filter((m) => !wantedSet.has(m.key));
  const toAdd = wanted
    .map((spec, i) => ({ spec, key: wantedKeys[i]! }))
    .filter(({ key }) => !liveByKey.has(key));

  // Close the removed listeners first: a changed mapping may keep its port.
  const drains = removed.map((m) =>
    proxy.remove(m.mapping, { drainTimeoutMs }).then(({ reset }) => ({ mapping: m, reset })),
  );
  const added: LiveMapping[] = [];
  try {
    for (const { spec, key } of toAdd) {
      const takesOver = removed.some((m) => sameListener(m.spec, spec));
      try {
        added.push({ key, spec, mapping: await openMapping(proxy, spec, takesOver) });
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
    await Promise.allSettled(added.map((m) => proxy.remove(m.mapping)));
    const problems: string[] = [];
    const restored: LiveMapping[] = [];
    for (const m of removed) {
      try {
        restored.push({ ...m, mapping: await openMapping(proxy, m.spec, true) });
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
