/**
 * The engine-independent proxy: validates options, keeps mapping metadata, decides when the
 * engine's handles keep the event loop alive, and shapes the stats snapshot.
 */
import type { Backend, RawCounters } from './backend.js';
import { resolveMapping, validateCloseOptions, validateProxyOptions } from './config.js';
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

function closedError(): Error {
  return Object.assign(new Error('the proxy is closed'), { code: 'ERR_PROXY_CLOSED' });
}

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
    if (this.closed) throw closedError();
    const spec = await resolveMapping(options);
    return this.#track(async () => {
      if (this.closed) throw closedError();
      const { id, port } = await this.#backend.add(spec);
      if (this.closed) {
        await this.#backend.remove(id);
        throw closedError();
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
    const id = typeof mapping === 'number' ? mapping : mapping?.id;
    if (typeof id !== 'number' || !this.#mappings.has(id)) {
      throw Object.assign(new Error(`mapping ${String(id)} is not active on this proxy`), {
        code: 'ERR_UNKNOWN_MAPPING',
      });
    }
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
    return { engine: this.engine, threads: this.#backend.threads(), mappings };
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

function shapeStats(m: Mapping, c: RawCounters): MappingStats {
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
      connections: { accepted: c.accepted, active: c.active, failed: c.failed },
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

/** Creates a proxy. Throws a TypeError or RangeError naming the field for bad options. */
export function createProxy(options?: ProxyOptions): Proxy {
  return new PortspliceProxy(options);
}
