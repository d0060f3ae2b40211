/**
 * The public shape of one mapping's stats, from an engine's raw counters (src/counters.ts).
 * test/counters.test.mjs checks that every counter of the mapping's protocol appears here.
 */
import type { RawCounters } from './counters.js';
import type { Mapping, MappingStats } from './types.js';

export function shapeStats(m: Mapping, c: RawCounters): MappingStats {
  const common = {
    id: m.id,
    listen: { ...m.listen },
    target: { ...m.target },
  };
  const bytes = { toTarget: c.toTarget, toClient: c.toClient, spliced: c.spliced, copied: c.copied };
  if (m.proto === 'tcp') {
    return {
      ...common,
      proto: 'tcp',
      connections: {
        accepted: c.accepted,
        active: c.active,
        failed: c.failed,
        limitReached: c.limitReached,
        idleClosed: c.idleClosed,
      },
      bytes,
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
    proto: 'udp',
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
