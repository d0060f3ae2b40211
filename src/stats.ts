/**
 * The public shape of one mapping's stats, from an engine's raw counters (src/counters.ts).
 * test/counters.test.mjs checks that every counter of the mapping's protocol appears here.
 */
import type { RawCounters } from './counters.js';
import type { EngineName, Mapping, MappingStats, ProxyStats } from './types.js';

/**
 * A copy of `value` that JSON can carry: bigints (the byte counters) become decimal strings,
 * which keep every digit where a number would not past 2^53. The stats' `toJSON`, and so the
 * command's `--json` lines, use it.
 */
export function jsonSafe(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map(jsonSafe);
  if (value !== null && typeof value === 'object') {
    // Own enumerable properties only: `toJSON` itself is not enumerable.
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonSafe(v)]));
  }
  return value;
}

function toJSON(this: object): unknown {
  return jsonSafe(this);
}

/**
 * Adds a non-enumerable `toJSON` (so that `deepEqual`, spreads and structuredClone do not see
 * it). Once per snapshot, not per mapping: defining a property costs about a microsecond,
 * several times the shaping of a mapping's stats.
 */
export function withToJSON<T extends object>(value: T): T & { toJSON(): unknown } {
  return Object.defineProperty(value, 'toJSON', { value: toJSON }) as T & { toJSON(): unknown };
}

export function shapeProxyStats(engine: EngineName, threads: number, mappings: MappingStats[]): ProxyStats {
  return withToJSON({ engine, threads, mappings });
}

export function shapeStats(m: Mapping, c: RawCounters): MappingStats {
  const common = {
    id: m.id,
    ...(m.name !== undefined && { name: m.name }),
    listen: { ...m.listen },
    target: { ...m.target },
  };
  const bytes = { toTarget: c.toTarget, toClient: c.toClient, spliced: c.spliced, copied: c.copied };
  if (m.proto === 'tcp') {
    const failedBy = {
      refused: c.failedRefused,
      timeout: c.failedTimeout,
      unreachable: c.failedUnreachable,
      other: c.failedOther,
    };
    return {
      ...common,
      proto: 'tcp' as const,
      connections: {
        accepted: c.accepted,
        active: c.active,
        failed: failedBy.refused + failedBy.timeout + failedBy.unreachable + failedBy.other,
        failedBy,
        limitReached: c.limitReached,
        idleClosed: c.idleClosed,
      },
      proxyHeaders: {
        sent: c.proxyHeadersSent,
        received: c.proxyHeadersReceived,
        rejected: c.proxyHeadersRejected,
      },
      bytes,
      pipes: { inUse: c.pipes, fallbacks: c.pipeFallbacks },
      events: { dropped: c.eventsDropped },
    };
  }
  const dropped = {
    noFlow: c.droppedNoFlow,
    queueFull: c.droppedQueueFull,
    refused: c.droppedRefused,
    truncated: c.droppedTruncated,
    other: c.droppedOther,
  };
  return {
    ...common,
    proto: 'udp' as const,
    flows: {
      active: c.flowsActive,
      created: c.flowsCreated,
      expired: c.flowsExpired,
      evicted: c.flowsEvicted,
    },
    datagrams: { toTarget: c.datagramsToTarget, toClient: c.datagramsToClient },
    dropped: {
      total: dropped.noFlow + dropped.queueFull + dropped.refused + dropped.truncated + dropped.other,
      ...dropped,
    },
    bytes,
  };
}
