/**
 * Failure events: the raw form the engines queue, the stream engine's queue (the splice
 * engine's is ps::EventQueue in native/core/ps_events.h, with the same bounds and rules),
 * and the public shape the proxy delivers in batches.
 */
import type { Endpoint, FailureReason, Mapping, ProxyEvent } from './types.js';
import { errnoCode } from './errors.js';

/** Events kept between two batches, as ps::EventQueue::kCapacity; the newest beyond it are dropped. */
export const EVENT_QUEUE_CAPACITY = 1024;
/** The proxy delivers a batch this long after the first event of it, so that a burst of failures costs one call. */
export const EVENT_BATCH_MS = 50;

/** An event as an engine queues it; the proxy adds the mapping's addresses. */
export interface RawEvent {
  kind: 'targetFailure' | 'listenerError';
  mapping: number;
  reason?: FailureReason;
  /** Negative errno. */
  errno: number;
  /** Milliseconds since the epoch. */
  time: number;
  client?: Endpoint;
}

export interface RawBatch {
  events: RawEvent[];
  dropped: number;
}

/** The counter of each reason (src/counters.ts). */
export const FAILURE_COUNTERS = {
  refused: 'failedRefused',
  timeout: 'failedTimeout',
  unreachable: 'failedUnreachable',
  other: 'failedOther',
} as const satisfies Record<FailureReason, string>;

/** The stream engine's reading of a connect error's code, as fail_reason() in ps_events.h. */
export function failureReason(code: string | undefined): FailureReason {
  switch (code) {
    case 'ECONNREFUSED':
      return 'refused';
    case 'ETIMEDOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'unreachable';
    default:
      return 'other';
  }
}

/** The stream engine's bounded queue: ps::EventQueue's rules, on the JavaScript thread. */
export class EventQueue {
  #events: RawEvent[] = [];
  #dropped = 0;
  #notified = false;
  #notify: (() => void) | undefined;

  get enabled(): boolean {
    return this.#notify !== undefined;
  }

  /** Starts recording; `notify` is called when an event arrives in an empty queue. Undefined stops and clears. */
  watch(notify: (() => void) | undefined): void {
    this.#notify = notify;
    this.#events = [];
    this.#dropped = 0;
    this.#notified = false;
  }

  /** False when the event was dropped (the queue is off or full): the caller counts it on its mapping. */
  push(event: Omit<RawEvent, 'time'>): boolean {
    if (this.#notify === undefined) return false;
    if (this.#events.length >= EVENT_QUEUE_CAPACITY) {
      this.#dropped++;
      return false;
    }
    this.#events.push({ ...event, time: Date.now() });
    if (!this.#notified) {
      this.#notified = true;
      this.#notify();
    }
    return true;
  }

  take(): RawBatch {
    const batch = { events: this.#events, dropped: this.#dropped };
    this.#events = [];
    this.#dropped = 0;
    this.#notified = false;
    return batch;
  }
}

/** The public event, with the mapping's addresses. */
export function shapeEvent(raw: RawEvent, mapping: Mapping): ProxyEvent {
  const code = errnoCode(raw.errno);
  const listen = { ...mapping.listen };
  if (raw.kind === 'listenerError') {
    return { type: 'listenerError', mapping: raw.mapping, code, errno: raw.errno, listen, time: raw.time };
  }
  return {
    type: 'targetFailure',
    mapping: raw.mapping,
    reason: raw.reason ?? 'other',
    code,
    errno: raw.errno,
    ...(raw.client?.host !== undefined && { client: { host: raw.client.host, port: raw.client.port } }),
    listen,
    target: { ...mapping.target },
    time: raw.time,
  };
}
