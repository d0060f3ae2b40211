/**
 * Every counter of a mapping, defined once on the JavaScript side: its name (the native
 * snapshot's field name), whether it counts bytes (a bigint: a long-lived mapping can pass
 * 2^53 bytes) or things (a number), and the protocol whose mappings have it. The native
 * definition is `PS_COUNTERS` in native/core/ps_counters.h; the splice engine checks the two
 * agree when the addon loads (`checkNativeFields`), and the stats shape and the metrics are
 * tested against this list.
 */
export const COUNTERS = [
  ['accepted', 'count', 'tcp'],
  ['active', 'count', 'tcp'],
  ['toTarget', 'bytes', 'both'],
  ['toClient', 'bytes', 'both'],
  ['spliced', 'bytes', 'both'],
  ['copied', 'bytes', 'both'],
  ['flowsActive', 'count', 'udp'],
  ['flowsCreated', 'count', 'udp'],
  ['flowsExpired', 'count', 'udp'],
  ['flowsEvicted', 'count', 'udp'],
  ['datagramsToTarget', 'count', 'udp'],
  ['datagramsToClient', 'count', 'udp'],
  ['droppedNoFlow', 'count', 'udp'],
  ['droppedQueueFull', 'count', 'udp'],
  ['droppedRefused', 'count', 'udp'],
  ['droppedTruncated', 'count', 'udp'],
  ['droppedOther', 'count', 'udp'],
  ['pipes', 'count', 'tcp'],
  ['pipeFallbacks', 'count', 'tcp'],
  ['proxyHeadersSent', 'count', 'tcp'],
  ['proxyHeadersReceived', 'count', 'tcp'],
  ['proxyHeadersRejected', 'count', 'tcp'],
  // Failed connects by reason (FAILURE_REASONS); `connections.failed` is their sum.
  ['failedRefused', 'count', 'tcp'],
  ['failedTimeout', 'count', 'tcp'],
  ['failedUnreachable', 'count', 'tcp'],
  ['failedOther', 'count', 'tcp'],
  ['eventsDropped', 'count', 'tcp'],
  ['limitReached', 'count', 'tcp'],
  ['idleClosed', 'count', 'tcp'],
] as const;

type CounterDef = (typeof COUNTERS)[number];
export type CounterName = CounterDef[0];

/** Raw counters of one mapping, as an engine keeps them. */
export type RawCounters = {
  [N in CounterName]: Extract<CounterDef, readonly [N, string, string]>[1] extends 'bytes' ? bigint : number;
};

const COUNTER_NAMES: readonly CounterName[] = COUNTERS.map(([name]) => name);

/** All counters at zero. */
export function newCounters(): RawCounters {
  return Object.fromEntries(COUNTERS.map(([name, kind]) => [name, kind === 'bytes' ? 0n : 0])) as RawCounters;
}

/**
 * Throws unless the addon's snapshot fields are `id` followed by exactly COUNTERS, in order:
 * an addon built from other sources would otherwise have its values read under the wrong
 * names or silently dropped.
 */
export function checkNativeFields(fields: readonly string[]): void {
  const expected = ['id', ...COUNTER_NAMES];
  if (fields.length === expected.length && fields.every((field, i) => field === expected[i])) return;
  const missing = expected.filter((f) => !fields.includes(f));
  const extra = fields.filter((f) => !expected.includes(f));
  throw new Error(
    `portsplice: the native addon's counters do not match this version of the library ` +
      `(missing: ${missing.join(', ') || 'none'}; unknown: ${extra.join(', ') || 'none'}; ` +
      `order ${fields.join(',')}): rebuild the addon ("npm rebuild portsplice").`,
  );
}
