/**
 * The raw native binding: its internal type and its loader. Only splice-engine.ts uses it;
 * nothing here is part of the public API.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RawBatch } from './events.js';

/** A mapping as the native engine takes it: validated, with address literals only. */
export interface NativeMappingSpec {
  proto: 'tcp' | 'udp';
  listenHost: string;
  listenPort: number;
  targetHost: string;
  targetPort: number;
  backlog: number;
  connectTimeoutMs: number;
  ipv6Only: boolean;
  udpTimeoutMs: number;
  udpMaxFlows: number;
  /** Times in whole seconds' worth of milliseconds, as validated by config.ts. */
  keepAlive: { idleMs: number; intervalMs: number; count: number } | false;
  /** TCP only; undefined: off. */
  proxyProtocol: 'v1' | 'v2' | undefined;
  /** TCP only. */
  acceptProxyProtocol: boolean;
  /** 0: no limit. */
  maxConnections: number;
  /** 0: no idle timeout. */
  idleTimeoutMs: number;
}

/** One native proxy: an engine with its own epoll threads. */
/**
 * Every command takes a `requestId`, handed back to `onComplete`: a whole number from 1 to
 * 2^53. The addon throws a RangeError for any other, 0 above all (ps::kNoRequest, a command
 * nobody waits for); the engine's own stop in close() uses 2^64-1 (ps::kOwnerStopRequest).
 */
export interface NativeProxy {
  /**
   * Binds (and listens) synchronously, throwing an Error with `code`, `errno` and `syscall`
   * on failure, then hands the socket to the engine threads; `onComplete(requestId, 0)`
   * follows once they serve it.
   */
  add(requestId: number, spec: NativeMappingSpec): { id: number; port: number };
  /** Closes a mapping's listening socket and lets its connections go on (a drain). */
  stopListening(requestId: number, mappingId: number): void;
  /** Stops a mapping; `onComplete(requestId, 0)` follows once its sockets are all closed. */
  remove(requestId: number, mappingId: number): void;
  /** Stops every thread; resolves once they have been joined and every fd is closed. */
  close(): Promise<void>;
  /** Counters of every live mapping, `statsFields.length` values a mapping. */
  stats(): BigUint64Array;
  /** Engine threads running now. */
  threads(): number;
  ref(): void;
  unref(): void;
  /** With a function: record failure events and call it when some wait (once per take); null: stop. */
  watchEvents(onEvents: (() => void) | null): void;
  /** The events recorded since the last call, and how many the full queue dropped. */
  takeEvents(): RawBatch;
}

export interface NativeBinding {
  NativeProxy: new (
    threads: number | 'auto',
    onComplete: (requestId: number, errno: number) => void,
    pipeSize: number,
    maxPipes: number,
  ) => NativeProxy;
  /** The names of the values of one mapping's row in `stats()`, in order. */
  statsFields: readonly string[];
  /** Figures of the engine for tools that measure it (soak/), from native/core/ps_worker.h. */
  engineConstants: Readonly<{ maxIdlePipesPerThread: number; fdsPerWorker: number }>;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let cached: NativeBinding | Error | undefined;

/**
 * Loads the addon once; throws an error that says where it looked and how to rebuild.
 * PORTSPLICE_ADDON names a .node file to load instead (a cmake-js or sanitizer build).
 */
export function loadBinding(): NativeBinding {
  if (cached === undefined) {
    const override = process.env.PORTSPLICE_ADDON;
    try {
      const require = createRequire(import.meta.url);
      if (override) {
        cached = require(path.resolve(override)) as NativeBinding;
      } else {
        const load = require('node-gyp-build') as (dir: string) => NativeBinding;
        cached = load(packageRoot);
      }
    } catch (cause) {
      // require() appends its "Require stack" lines: the first line says what went wrong.
      const reason = String((cause as Error).message).split('\n')[0];
      cached = new Error(
        override
          ? `portsplice: cannot load the native addon ${path.resolve(override)} (PORTSPLICE_ADDON): ${reason}`
          : `portsplice: cannot load the native addon: no prebuilt binary in ` +
              `${path.join(packageRoot, 'prebuilds')} loads on ${process.platform}-${process.arch} ` +
              `and there is no build in ${path.join(packageRoot, 'build', 'Release')} (${reason}); ` +
              `build it with "npm rebuild portsplice" (needs python3, make and a C++17 compiler), ` +
              `or use createProxy({ engine: 'stream' }).`,
        { cause },
      );
    }
  }
  if (cached instanceof Error) throw cached;
  return cached;
}

/** The reason the addon cannot be loaded, or undefined when it loads. */
export function bindingError(): Error | undefined {
  try {
    loadBinding();
    return undefined;
  } catch (error) {
    return error as Error;
  }
}
