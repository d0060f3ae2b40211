/**
 * The contract between the engine-independent proxy (`PortspliceProxy`) and an engine. An engine moves bytes
 * and keeps counters; the proxy owns validation, mapping metadata, lifecycle and stats shape.
 */
import type { ResolvedMapping } from './config.js';
import type { RawCounters } from './counters.js';
import type { RawBatch } from './events.js';

export interface Engine {
  /** Binds and starts serving; resolves to the engine's id and the port actually bound. */
  add(mapping: ResolvedMapping): Promise<{ id: number; port: number }>;
  /** Closes the mapping's listening socket; its open connections go on (a drain). */
  stopListening(id: number): Promise<void>;
  /**
   * Stops listening and resets the mapping's open connections. Once close() has begun it
   * does nothing: close() takes down every mapping, one whose add() is still in flight too.
   */
  remove(id: number): Promise<void>;
  /**
   * Stops everything, mappings whose add() is in flight included (that add() may still
   * resolve: the caller then removes it); resolves once all resources are released.
   */
  close(): Promise<void>;
  /** A snapshot of every live mapping's counters, by id. */
  counters(): Map<number, RawCounters>;
  /** Whether the engine's handles keep the Node event loop alive. */
  setRef(ref: boolean): void;
  /** Native engine threads running now; 0 for an engine without any. */
  threads(): number;
  /**
   * Starts recording failure events (bounded: EVENT_QUEUE_CAPACITY between two takes), calling
   * `notify` when one arrives in an empty queue; undefined stops recording and drops the queue.
   */
  watchEvents(notify: (() => void) | undefined): void;
  /** The events recorded since the last take, and how many were dropped meanwhile. */
  takeEvents(): RawBatch;
}
