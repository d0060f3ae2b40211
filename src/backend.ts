/**
 * The contract between the engine-independent `Proxy` and an engine. An engine moves bytes
 * and keeps counters; the proxy owns validation, mapping metadata, lifecycle and stats shape.
 */
import type { ResolvedMapping } from './config.js';

/** Raw counters of one mapping, as an engine keeps them (the native row's field names). */
export interface RawCounters {
  // TCP.
  accepted: number;
  active: number;
  failed: number;
  // Both.
  toTarget: bigint;
  toClient: bigint;
  spliced: bigint;
  copied: bigint;
  // UDP.
  flowsActive: number;
  flowsCreated: number;
  flowsExpired: number;
  flowsEvicted: number;
  datagramsToTarget: number;
  datagramsToClient: number;
  droppedNoFlow: number;
  droppedQueueFull: number;
  droppedRefused: number;
  droppedTruncated: number;
  droppedOther: number;
}

/** Counters that are bigints; every other counter is a number. */
export const BYTE_COUNTERS: ReadonlySet<string> = new Set(['toTarget', 'toClient', 'spliced', 'copied']);

export function newCounters(): RawCounters {
  return {
    accepted: 0,
    active: 0,
    failed: 0,
    toTarget: 0n,
    toClient: 0n,
    spliced: 0n,
    copied: 0n,
    flowsActive: 0,
    flowsCreated: 0,
    flowsExpired: 0,
    flowsEvicted: 0,
    datagramsToTarget: 0,
    datagramsToClient: 0,
    droppedNoFlow: 0,
    droppedQueueFull: 0,
    droppedRefused: 0,
    droppedTruncated: 0,
    droppedOther: 0,
  };
}

export interface Backend {
  /** Binds and starts serving; resolves to the engine's id and the port actually bound. */
  add(mapping: ResolvedMapping): Promise<{ id: number; port: number }>;
  /** Closes the mapping's listening socket; its open connections go on (a drain). */
  stopListening(id: number): Promise<void>;
  /** Stops listening and resets the mapping's open connections. */
  remove(id: number): Promise<void>;
  /** Stops everything; resolves once all resources are released. */
  close(): Promise<void>;
  /** A snapshot of every live mapping's counters, by id. */
  counters(): Map<number, RawCounters>;
  /** Whether the engine's handles keep the Node event loop alive. */
  setRef(ref: boolean): void;
  /** Native engine threads running now; 0 for an engine without any. */
  threads(): number;
}
