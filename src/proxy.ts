/**
 * The engine-independent proxy: validates options, keeps mapping metadata, decides when the
 * engine's handles keep the event loop alive, and shapes the stats snapshot.
 */
import type { Backend } from './backend.js';
import { resolveMapping, validateProxyOptions } from './config.js';
import { SpliceBackend } from './splice-engine.js';
import { StreamBackend } from './stream-engine.js';
import type { EngineName, Mapping, MappingOptions, Proxy, ProxyOptions, ProxyStats } from './types.js';

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

  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#mappings.clear();
      this.#closing = this.#backend.close().finally(() => openProxies.delete(this));
    }
    return this.#closing;
  }

  stats(): ProxyStats {
    const counters = this.#backend.counters();
    const mappings = [];
    for (const [id, m] of this.#mappings) {
      const c = counters.get(id);
      if (!c) continue;
      mappings.push({
        id,
        proto: m.proto,
        listen: { ...m.listen },
        target: { ...m.target },
        connections: { accepted: c.accepted, active: c.active, failed: c.failed },
        bytes: { toTarget: c.toTarget, toClient: c.toClient, spliced: c.spliced, copied: c.copied },
      });
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
