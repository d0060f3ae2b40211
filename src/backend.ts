/**
 * The contract between the engine-independent `Proxy` and an engine. An engine moves bytes
 * and keeps counters; the proxy owns validation, mapping metadata, lifecycle and stats shape.
 */
import type { ResolvedMapping } from './config.js';

/** Raw counters of one mapping, as an engine keeps them. */
export interface RawCounters {
  accepted: number;
  active: number;
  failed: number;
  toTarget: bigint;
  toClient: bigint;
  spliced: bigint;
  copied: bigint;
}

export interface Backend {
  /** Binds and starts serving; resolves to the engine's id and the port actually bound. */
  add(mapping: ResolvedMapping): Promise<{ id: number; port: number }>;
  /** Stops listening and resets the mapping's open connections. */
  remove(id: number): Promise<void>;
  /** Stops everything; resolves once all resources are released. */
  close(): Promise<void>;
  /** A snapshot of every live mapping's counters, by id. */
  counters(): Map<number, RawCounters>;
  /** Whether the engine's handles keep the Node event loop alive. */
  setRef(ref: boolean): void;
}
