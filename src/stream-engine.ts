/**
 * The pure Node engine: the fallback where splice(2) is not available and the baseline the
 * benchmarks compare against. It keeps the splice engine's semantics: half-close forwarded
 * after the data before it, resets forwarded as resets, failures and drops counted.
 */
import type { Engine } from './engine.js';
import { newCounters, type RawCounters } from './counters.js';
import type { ResolvedMapping } from './config.js';
import type { StreamMapping } from './stream-mapping.js';
import { EventQueue, type RawBatch } from './events.js';
import { StreamTcpMapping } from './stream-tcp.js';
import { StreamUdpMapping } from './stream-udp.js';

export class StreamEngine implements Engine {
  #mappings = new Map<number, StreamMapping>();
  #nextId = 1;
  #ref = true;
  /** add() calls still running, so that close() can wait for them. */
  #adding = new Set<Promise<unknown>>();
  #closing = false;
  #events = new EventQueue();

  async add(spec: ResolvedMapping): Promise<{ id: number; port: number }> {
    const adding = this.#add(spec);
    this.#adding.add(adding);
    try {
      return await adding;
    } finally {
      this.#adding.delete(adding);
    }
  }

  async #add(spec: ResolvedMapping): Promise<{ id: number; port: number }> {
    const counters = newCounters();
    // The id is taken before binding, so that the mapping's events can carry it.
    const id = this.#nextId++;
    const mapping: StreamMapping =
      spec.proto === 'tcp'
        ? new StreamTcpMapping(spec, counters, { queue: this.#events, mapping: id })
        : new StreamUdpMapping(spec, counters);
    const port = await mapping.listen();
    mapping.setRef(this.#ref);
    this.#mappings.set(id, mapping);
    // close() began while this one was binding, and waits for it: take it down too.
    if (this.#closing) await this.remove(id);
    return { id, port };
  }

  async stopListening(id: number): Promise<void> {
    this.#mappings.get(id)?.stopListening();
  }

  async remove(id: number): Promise<void> {
    const mapping = this.#mappings.get(id);
    if (!mapping) return;
    this.#mappings.delete(id);
    await mapping.close();
  }

  async close(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#adding]);
    await Promise.all([...this.#mappings.keys()].map((id) => this.remove(id)));
  }

  counters(): Map<number, RawCounters> {
    const snapshot = new Map<number, RawCounters>();
    for (const [id, mapping] of this.#mappings) snapshot.set(id, { ...mapping.counters });
    return snapshot;
  }

  threads(): number {
    return 0;
  }

  watchEvents(notify: (() => void) | undefined): void {
    this.#events.watch(notify);
  }

  takeEvents(): RawBatch {
    return this.#events.take();
  }

  setRef(ref: boolean): void {
    this.#ref = ref;
    for (const mapping of this.#mappings.values()) mapping.setRef(ref);
  }
}
