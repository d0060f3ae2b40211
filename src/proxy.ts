/**
 * The engine-independent proxy: validates options, keeps mapping metadata, decides when the
 * engine's handles keep the event loop alive, and shapes the stats snapshot.
 */
import type { Engine } from './engine.js';
import { resolveMapping, validateCloseOptions, validateProxyOptions } from './config.js';
import { bindingError } from './binding.js';
import { proxyClosedError, unknownMappingError } from './errors.js';
import { shapeStats } from './stats.js';
import { SpliceEngine } from './splice-engine.js';
import { StreamEngine } from './stream-engine.js';
import type {
  CloseOptions,
  DrainResult,
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
const openProxies = new Set<PortspliceProxy>();

class PortspliceProxy implements Proxy {
  readonly engine: EngineName;
  #engine: Engine;
  #mappings = new Map<number, Mapping>();
  /** Mappings whose listener is closed: draining before their removal. */
  #stopped = new Set<number>();
  #pending = 0;
  #wantRef = true;
  #isRefed: boolean | undefined;
  #closing: Promise<DrainResult> | undefined;

  constructor(options: ProxyOptions | undefined) {
    // Validate first, so that bad options throw before any fallback warning.
    const validated = validateProxyOptions(options, 'splice');
    const resolved = options?.engine === undefined ? { ...validated, engine: defaultEngine() } : validated;
    this.engine = resolved.engine;
    this.#engine = resolved.engine === 'splice' ? new SpliceEngine(resolved) : new StreamEngine();
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

  stats(): ProxyStats {
    const counters = this.#engine.counters();
    const mappings: MappingStats[] = [];
    for (const [id, m] of this.#mappings) {
      const c = counters.get(id);
      if (c) mappings.push(shapeStats(m, c));
    }
    return { engine: this.engine, threads: this.#engine.threads(), mappings };
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
