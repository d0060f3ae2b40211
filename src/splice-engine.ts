/**
 * The splice engine: a thin adapter over the native addon. JavaScript sends commands and
 * reads counter snapshots; the bytes never cross into JavaScript.
 */
import type { Engine } from './engine.js';
import { checkNativeFields, COUNTERS, type RawCounters } from './counters.js';
import { loadBinding, type NativeProxy } from './binding.js';
import type { ResolvedMapping, ResolvedProxyOptions } from './config.js';
import { errnoCode, type PortspliceError } from './errors.js';
import type { RawBatch } from './events.js';

/** The error a native call throws: a Node-style system error. */
type SystemError = Error & { code?: string; errno?: number; syscall?: string };

/** What a request was, so that an error found later on an engine thread can say so. */
interface RequestContext {
  /** The engine command, as the error's `syscall`: 'add', 'stopListening', 'remove'. */
  command: string;
  address?: string;
  port?: number;
}

/**
 * An error an engine thread reported for a request (a negative errno), shaped like the
 * synchronous ones: `code`, `errno`, `syscall` (the engine command, since the thread's system
 * call is not carried over), and the address and port where one applies.
 */
export function engineError(errno: number, context: RequestContext): PortspliceError {
  const code = errnoCode(errno);
  const where = context.address === undefined ? '' : ` ${context.address}:${context.port}`;
  return Object.assign(new Error(`${context.command} ${code}${where}`), {
    code,
    errno,
    syscall: context.command,
    ...(context.address === undefined ? {} : { address: context.address, port: context.port }),
  });
}

export class SpliceEngine implements Engine {
  #native: NativeProxy;
  #pending = new Map<number, { resolve: () => void; reject: (e: Error) => void; context: RequestContext }>();
  /** Request ids count up from 1: 0 and 2^64-1 are the core's (ps::kNoRequest,
   * ps::kOwnerStopRequest), which the addon refuses with a RangeError. */
  #nextRequest = 1;
  #closing = false;

  constructor(options: ResolvedProxyOptions) {
    const binding = loadBinding();
    checkNativeFields(binding.statsFields);
    this.#native = new binding.NativeProxy(
      options.threads,
      (requestId, errno) => this.#complete(requestId, errno),
      options.pipeSize,
      options.maxPipes,
    );
  }

  #complete(requestId: number, errno: number): void {
    const request = this.#pending.get(requestId);
    if (!request) return;
    this.#pending.delete(requestId);
    if (errno === 0) request.resolve();
    else request.reject(engineError(errno, request.context));
  }

  #request(context: RequestContext, send: (requestId: number) => void): Promise<void> {
    const requestId = this.#nextRequest++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(requestId, { resolve, reject, context });
      try {
        send(requestId);
      } catch (error) {
        this.#pending.delete(requestId);
        reject(error as SystemError);
      }
    });
  }

  async add(spec: ResolvedMapping): Promise<{ id: number; port: number }> {
    let result = { id: 0, port: 0 };
    const context = { command: 'add', address: spec.listen.host, port: spec.listen.port };
    await this.#request(context, (requestId) => {
      result = this.#native.add(requestId, {
        proto: spec.proto,
        listenHost: spec.listen.host,
        listenPort: spec.listen.port,
        targetHost: spec.target.host,
        targetPort: spec.target.port,
        backlog: spec.backlog,
        connectTimeoutMs: spec.connectTimeoutMs,
        ipv6Only: spec.ipv6Only,
        udpTimeoutMs: spec.udpTimeoutMs,
        udpMaxFlows: spec.udpMaxFlows,
        keepAlive: spec.keepAlive,
        proxyProtocol: spec.proxyProtocol,
        acceptProxyProtocol: spec.acceptProxyProtocol,
        maxConnections: spec.maxConnections,
        idleTimeoutMs: spec.idleTimeoutMs,
      });
      context.port = result.port;
    });
    return result;
  }

  stopListening(id: number): Promise<void> {
    return this.#request({ command: 'stopListening' }, (requestId) =>
      this.#native.stopListening(requestId, id),
    );
  }

  remove(id: number): Promise<void> {
    // The engine stops every mapping on close, and would answer ENOENT for this one.
    if (this.#closing) return Promise.resolve();
    return this.#request({ command: 'remove' }, (requestId) => this.#native.remove(requestId, id));
  }

  close(): Promise<void> {
    this.#closing = true;
    return this.#native.close();
  }

  counters(): Map<number, RawCounters> {
    // A row is the mapping id, then COUNTERS in order (checked when the addon loaded).
    const raw = this.#native.stats();
    const width = COUNTERS.length + 1;
    const snapshot = new Map<number, RawCounters>();
    for (let row = 0; row + width <= raw.length; row += width) {
      const counters: Record<string, number | bigint> = {};
      COUNTERS.forEach(([name, kind], i) => {
        const value = raw[row + 1 + i]!;
        counters[name] = kind === 'bytes' ? value : Number(value);
      });
      snapshot.set(Number(raw[row]), counters as RawCounters);
    }
    return snapshot;
  }

  threads(): number {
    return this.#native.threads();
  }

  watchEvents(notify: (() => void) | undefined): void {
    this.#native.watchEvents(notify ?? null);
  }

  takeEvents(): RawBatch {
    return this.#native.takeEvents();
  }

  setRef(ref: boolean): void {
    if (ref) this.#native.ref();
    else this.#native.unref();
  }
}
