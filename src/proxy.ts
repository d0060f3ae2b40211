/**
 * The engine-independent proxy: validates options, keeps mapping metadata, decides when the
 * engine's handles keep the event loop alive, and shapes the stats snapshot.
 */
import type { Engine } from './engine.js';
import { resolveMapping, validateCloseOptions, validateProxyOptions } from './config.js';
import { bindingError } from './binding.js';
import { proxyClosedError, unknownMappingError } from './errors.js';
import { EVENT_BATCH_MS, shapeEvent } from './events.js';
import { shapeProxyStats, shapeStats, withToJSON } from './stats.js';
import { SpliceEngine } from './splice-engine.js';
import { StreamEngine } from './stream-engine.js';
import type {
  CloseOptions,
  DrainResult,
  EngineName,
  Mapping,
  MappingOptions,
  MappingStats,
  PortspliceProxy,
  ProxyEvent,
  ProxyOptions,
  ProxyStats,
} from './types.js';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

/** How often a drain looks at the connection counts. */
const DRAIN_POLL_MS = 20;

/** The fallback to the stream engine is announced once per process, not once per proxy. */
let warnedFallback = false;

/**
 * The engine when none is asked for: splice on Linux when its addon loads, else stream (with a
 * one-time warning that names what is missing, so that a failed install does not go unnoticed).
 * An explicit `engine: 'splice'` never falls back: SpliceEngine throws the load error.
 */
function defaultEngine(): EngineName {
  if (process.platform !== 'linux') return 'stream';
  const missing = bindingError();
  if (missing === undefined) return 'splice';
  if (!warnedFallback) {
    warnedFallback = true;
    process.emitWarning(`${missing.message.replace(/\.$/, '')}; falling back to the stream engine`, {
      code: 'PORTSPLICE_STREAM_FALLBACK',
    });
  }
  return 'stream';
}

/** Open proxies stay reachable until closed, as a listening net.Server does. */
const openProxies = new Set<ProxyImpl>();

class ProxyImpl extends EventEmitter implements PortspliceProxy {
  readonly engine: EngineName;
  #engine: Engine;
  #mappings = new Map<number, Mapping>();
  /** Mappings whose listener is closed: draining before their removal. */
  #stopped = new Set<number>();
  #pending = 0;
  #wantRef = true;
  #isRefed: boolean | undefined;
  #closing: Promise<DrainResult> | undefined;
  /** The pending delivery of a batch of events, while some wait. */
  #batchTimer: NodeJS.Timeout | undefined;

  constructor(options: ProxyOptions | undefined) {
    super();
    // Validate first, so that bad options throw before any fallback warning.
    const validated = validateProxyOptions(options, 'splice');
    const resolved = options?.engine === undefined ? { ...validated, engine: defaultEngine() } : validated;
    this.engine = resolved.engine;
    this.#engine = resolved.engine === 'splice' ? new SpliceEngine(resolved) : new StreamEngine();
    openProxies.add(this);
    this.#updateRef();
    // The engine records events only while someone listens for them.
    this.on('newListener', (name: string | symbol) => {
      if (name === 'events' && this.listenerCount('events') === 0 && !this.closed)
        this.#engine.watchEvents(() => this.#scheduleBatch());
    });
    this.on('removeListener', (name: string | symbol) => {
      if (name === 'events' && this.listenerCount('events') === 0) this.#stopEvents();
    });
  }

  /** Called by the engine when an event arrives in its empty queue. */
  #scheduleBatch(): void {
    if (this.#batchTimer !== undefined) return;
    // A burst of failures is one batch; the engine keeps them (bounded) meanwhile.
    this.#batchTimer = setTimeout(() => this.#deliverBatch(), EVENT_BATCH_MS);
    this.#batchTimer.unref();
  }

  #deliverBatch(): void {
    clearTimeout(this.#batchTimer);
    this.#batchTimer = undefined;
    if (this.listenerCount('events') === 0) return;
    const raw = this.#engine.takeEvents();
    const events: ProxyEvent[] = [];
    for (const event of raw.events) {
      // A mapping removed before its events were delivered has no addresses left to give.
      const mapping = this.#mappings.get(event.mapping);
      if (mapping) events.push(shapeEvent(event, mapping));
    }
    if (events.length > 0 || raw.dropped > 0) this.emit('events', { events, dropped: raw.dropped });
  }

  #stopEvents(): void {
    clearTimeout(this.#batchTimer);
    this.#batchTimer = undefined;
    this.#engine.watchEvents(undefined);
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /**
   * The engine holds the event loop open while a command is in flight (so an awaited call
   * always settles) and, unless unref'd, while any mapping exists.
   */
  #updateRef(): void {
    const ref = this.#pending > 0 || (this.#wantRef && this.#mappings.size > 0);
    if (ref !== this.#isRefed && !this.closed) {
      this.#isRefed = ref;
      this.#engine.setRef(ref);
    }
  }

  async #track<T>(work: () => Promise<T>): Promise<T> {
    this.#pending++;
    this.#updateRef();
    try {
      return await work();
    } finally {
      this.#pending--;
      this.#updateRef();
    }
  }

  async add(options: MappingOptions): Promise<Mapping> {
    if (this.closed) throw proxyClosedError();
    const spec = await resolveMapping(options);
    return this.#track(async () => {
      if (this.closed) throw proxyClosedError();
      const { id, port } = await this.#engine.add(spec);
      if (this.closed) {
        // close() began while the engine was binding. During a drain the engine is still
        // running and this mapping, which the drain does not know, must not accept; once
        // the engine closes, remove() is a no-op (the engine takes everything down).
        await this.#engine.remove(id);
        throw proxyClosedError();
      }
      const mapping: Mapping = Object.freeze({
        id,
        proto: spec.proto,
        listen: Object.freeze({ host: spec.listen.host, port }),
        target: Object.freeze({ ...spec.target }),
        ...(spec.name !== undefined && { name: spec.name }),
      });
      this.#mappings.set(id, mapping);
      return mapping;
    });
  }

  async remove(mapping: Mapping | number, options?: CloseOptions): Promise<DrainResult> {
    if (this.closed) throw proxyClosedError();
    const id = typeof mapping === 'number' ? mapping : mapping?.id;
    if (typeof id !== 'number' || !this.#mappings.has(id) || this.#stopped.has(id))
      throw unknownMappingError(id);
    const drainTimeoutMs = validateCloseOptions(options);
    return this.#track(async () => {
      const reset = await this.#drain([id], drainTimeoutMs);
      // A close() during the drain removes everything itself.
      if (this.closed) return { reset };
      this.#mappings.delete(id);
      this.#stopped.delete(id);
      await this.#engine.remove(id);
      return { reset };
    });
  }

  close(options?: CloseOptions): Promise<DrainResult> {
    if (this.#closing === undefined) {
      let drainTimeoutMs: number;
      try {
        drainTimeoutMs = validateCloseOptions(options);
      } catch (error) {
        return Promise.reject(error);
      }
      this.#closing = this.#drain([...this.#mappings.keys()], drainTimeoutMs)
        .then(async (reset) => {
          // What the engine recorded up to now is still delivered (also what it has not yet
          // announced: its notification may still be on its way), then recording stops.
          this.#deliverBatch();
          this.#stopEvents();
          this.#mappings.clear();
          await this.#engine.close();
          return { reset };
        })
        .finally(() => openProxies.delete(this));
    }
    return this.#closing;
  }

  /** Open TCP connections of these mappings (UDP flows have no end to wait for). */
  #openConnections(ids: readonly number[]): number {
    const counters = this.#engine.counters();
    let active = 0;
    for (const id of ids)
      if (this.#mappings.get(id)?.proto === 'tcp') active += counters.get(id)?.active ?? 0;
    return active;
  }

  /**
   * Closes these mappings' listeners and waits, up to the timeout, for their open TCP
   * connections to end; resolves with how many are still open (to be reset by the caller).
   */
  async #drain(ids: readonly number[], timeoutMs: number): Promise<number> {
    if (timeoutMs === 0 || ids.length === 0) return this.#openConnections(ids);
    const listening = ids.filter((id) => !this.#stopped.has(id));
    for (const id of listening) this.#stopped.add(id);
    await Promise.all(listening.map((id) => this.#engine.stopListening(id)));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const active = this.#openConnections(ids);
      if (active === 0 || Date.now() >= deadline) return active;
      await sleep(Math.min(DRAIN_POLL_MS, Math.max(1, deadline - Date.now())));
    }
  }

  stats(): ProxyStats;
  stats(mapping: Mapping | number): MappingStats & { toJSON(): unknown };
  stats(mapping?: Mapping | number): ProxyStats | MappingStats {
    const counters = this.#engine.counters();
    if (mapping !== undefined) {
      const id = typeof mapping === 'number' ? mapping : mapping?.id;
      const m = typeof id === 'number' ? this.#mappings.get(id) : undefined;
      const c = m && counters.get(m.id);
      if (!m || !c) throw unknownMappingError(id);
      return withToJSON(shapeStats(m, c));
    }
    const mappings: MappingStats[] = [];
    for (const [id, m] of this.#mappings) {
      const c = counters.get(id);
      if (c) mappings.push(shapeStats(m, c));
    }
    return shapeProxyStats(this.engine, this.#engine.threads(), mappings);
  }

  mappings(): Mapping[] {
    return [...this.#mappings.values()].filter((m) => !this.#stopped.has(m.id));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  ref(): this {
    this.#wantRef = true;
    this.#updateRef();
    return this;
  }

  unref(): this {
    this.#wantRef = false;
    this.#updateRef();
    return this;
  }
}

/** Creates a proxy. Throws a TypeError or RangeError naming the field for bad options. */
export function createProxy(options?: ProxyOptions): PortspliceProxy {
  return new ProxyImpl(options);
}
