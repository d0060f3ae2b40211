/**
 * Log lines for failure events (`proxy.on('events')`), for when stdout is a log: the first
 * failure of a mapping for a reason is logged at once, with its addresses; the next ones for
 * that mapping and reason within the window are only counted, and their number logged when
 * the window ends. A target that refuses a thousand connections a second is a line every
 * few seconds, not a thousand.
 */
import type { EventBatch, PortspliceProxy, ProxyEvent } from '../types.js';
import { formatEndpoint } from './endpoint.js';

/** At most one line per mapping and reason per window (plus one with the count). */
export const FAILURE_LOG_WINDOW_MS = 10_000;

const REASON_TEXT = {
  refused: 'refused the connection',
  timeout: 'did not answer in time',
  unreachable: 'is unreachable',
  other: 'could not be connected to',
} as const;

interface Window {
  /** What the count line says the count is of. */
  what: string;
  /** Events counted and not logged since the window opened. */
  suppressed: number;
  timer: NodeJS.Timeout;
}

function lineOf(e: ProxyEvent): string {
  const where = `mapping ${e.mapping} ${formatEndpoint(e.listen.host, e.listen.port)}`;
  if (e.type === 'listenerError')
    return `${where}: accept() failed (${e.code}); pausing the listener for 100 ms`;
  const client = e.client === undefined ? '' : ` for client ${formatEndpoint(e.client.host, e.client.port)}`;
  return `${where}: target ${formatEndpoint(e.target.host, e.target.port)} ${REASON_TEXT[e.reason]} (${e.code})${client}`;
}

/** Subscribes to the proxy's failure events and logs them rate-limited; returns the unsubscribe. */
export function logFailures(
  proxy: PortspliceProxy,
  log: (line: string) => void,
  windowMs = FAILURE_LOG_WINDOW_MS,
): () => void {
  const windows = new Map<string, Window>();
  const closeWindow = (key: string) => {
    const w = windows.get(key);
    if (!w) return;
    clearTimeout(w.timer);
    windows.delete(key);
    if (w.suppressed > 0)
      log(`${w.what}: ${w.suppressed} more within ${windowMs / 1000} s, not logged one by one`);
  };
  /** Logs `line` unless the key's window is open, in which case it counts `n`. */
  const note = (key: string, what: string, line: string, n = 1) => {
    const open = windows.get(key);
    if (open) {
      open.suppressed += n;
      return;
    }
    log(line);
    const timer = setTimeout(() => closeWindow(key), windowMs);
    timer.unref();
    windows.set(key, { what, suppressed: 0, timer });
  };
  const onEvents = (batch: EventBatch) => {
    for (const e of batch.events) {
      if (e.type === 'targetFailure') {
        note(`${e.mapping} ${e.reason}`, `mapping ${e.mapping}: target ${e.reason}`, lineOf(e));
      } else {
        note(`${e.mapping} listener`, `mapping ${e.mapping}: accept() failures`, lineOf(e));
      }
    }
    // Only the count is known of the events the queue had no room for.
    if (batch.dropped > 0) {
      note(
        'dropped',
        'failure events not recorded',
        `${batch.dropped} failure events not recorded (more than the queue holds between two reads)`,
        batch.dropped,
      );
    }
  };
  proxy.on('events', onEvents);
  return () => {
    proxy.off('events', onEvents);
    for (const key of [...windows.keys()]) closeWindow(key);
  };
}
