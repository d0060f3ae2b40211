/**
 * The engine-independent proxy: validates options, keeps mapping metadata, decides when the
 * engine's handles keep the event loop alive, and shapes the stats snapshot.
 */
import type { Backend } from './backend.js';
import { resolveMapping, validateCloseOptions, validateProxyOptions } from './config.js';
import { proxyClosedError, unknownMappingError } from './errors.js';
import { shapeStats } from './stats.js';
import { SpliceBackend } from './splice-engine.js';
import { StreamBackend } from './stream-engine.js';
import type {
  CloseOptions,
  EngineName,
  Mapping,
  MappingOptions,
  MappingStats,
  Proxy,
  ProxyOptions,
  ProxyStats,
} from './types.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** How often a drain looks at the connection counts. */
const DRAIN_POLL_MS = 20;

/** Open proxies stay reachable until closed, as a listening net.Server does. */
const openProxies = new Set<PortspliceProxy>();

class PortspliceProxy implements Proxy {
  readonly engine: EngineName;
  #backend: Backend;
  #mappings = new Map<number, Mapping>();
  #pending = 0;
  #wantRef = true;
  #isRefed: boolean | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: ProxyOptions | undefined) {
    const resolved = validateProxyOptions(options, process.platform === 'linux' ? 'splice' : 'stream');
    this.engine = resolved.engine;
    this.#backend = resolved.engine === 'splice' ? new SpliceBackend(resolved) : new StreamBackend();
    openProxies.add(this);
    this.#updateRef();
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
      this.#backend.setRef(ref);
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
      const { id, port } = await this.#backend.add(spec);
      if (this.closed) {
        // close() began while the engine was binding. During a drain the engine is still
        // running and this mapping, which the drain does not know, must not accept; once
        // the engine closes, remove() is a no-op (the engine takes everything down).
        await this.#backend.remove(id);
        throw proxyClosedError();
      }
      const mapping: Mapping = Object.freeze({
        id,
        proto: spec.proto,
        listen: Object.freeze({ host: spec.listen.host, port }),
        target: Object.freeze({ ...spec.target }),
      });
      this.#mappings.set(id, mapping);
      return mapping;
    });
  }

  async remove(mapping: Mapping | number): Promise<void> {
    if (this.closed) throw proxyClosedError();
    const id = typeof mapping === 'number' ? mapping : mapping?.id;
    if (typeof id !== 'number' || !this.#mappings.has(id)) throw unknownMappingError(id);
    this.#mappings.delete(id);
    await this.#track(() => this.#backend.remove(id));
  }

  close(options?: CloseOptions): Promise<void> {
    if (this.#closing === undefined) {
      let drainTimeoutMs: number;
      try {
        drainTimeoutMs = validateCloseOptions(options);
      } catch (error) {
        return Promise.reject(error);
      }
      this.#closing = this.#drain(drainTimeoutMs)
        .then(() => {
          this.#mappings.clear();
          return this.#backend.close();
        })
        .finally(() => openProxies.delete(this));
    }
    return this.#closing;
  }

  /** Closes the listeners and waits, up to the timeout, for open connections to end. */
  async #drain(timeoutMs: number): Promise<void> {
    if (timeoutMs === 0 || this.#mappings.size === 0) return;
    await Promise.all([...this.#mappings.keys()].map((id) => this.#backend.stopListening(id)));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      let active = 0;
      for (const c of this.#backend.counters().values()) active += c.active;
      if (active === 0) return;
      await sleep(Math.min(DRAIN_POLL_MS, Math.max(1, deadline - Date.now())));
    }
  }

  stats(): ProxyStats {
    const counters = this.#backend.counters();
    const mappings: MappingStats[] = [];
    for (const [id, m] of this.#mappings) {
      const c = counters.get(id);
      if (c) mappings.push(shapeStats(m, c));
    }
    return { engine: this.engine, mappings };
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
export function createProxy(options?: ProxyOptions): Proxy {
  return new PortspliceProxy(options);
}
