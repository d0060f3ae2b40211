/**
 * The contract between the stream engine and its per-protocol mappings (stream-tcp.ts,
 * stream-udp.ts), in a module of its own so that neither side imports the other.
 */
import type { RawCounters } from './counters.js';

/** One mapping of the stream engine, whatever its protocol. */
export interface StreamMapping {
  readonly counters: RawCounters;
  /** Binds; resolves to the port actually bound. */
  listen(): Promise<number>;
  /** Stops taking new connections or flows; TCP connections go on. */
  stopListening(): void;
  /** Stops everything, resetting open connections. */
  close(): Promise<void>;
  setRef(ref: boolean): void;
}
