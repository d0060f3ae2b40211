/**
 * What the CLI prints while it runs: the live terminal view (redrawn in place), JSON stats
 * lines for machines, and startup lines for logs. The formatting functions are pure.
 */
import type { Endpoint, MappingStats, PortspliceProxy, ProxyStats } from '../types.js';
import { jsonSafe } from '../stats.js';
import { formatEndpoint } from './args.js';

/** A writable text stream (process.stdout, or a test double). */
export interface Output {
  write(text: string): unknown;
  columns?: number;
  rows?: number;
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** 1536 → "1.5 KiB"; one decimal below 100 of a unit, none above. */
export function formatBytes(value: number | bigint): string {
  let n = Number(value);
  let unit = 0;
  while (n >= 1024 && unit < UNITS.length - 1) {
    n /= 1024;
    unit++;
  }
  if (unit === 0) return `${n} B`;
  return `${n < 100 ? n.toFixed(1) : Math.round(n)} ${UNITS[unit]}`;
}

export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(Math.max(0, Math.round(bytesPerSecond)))}/s`;
}

export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return hh >= 24
    ? `${Math.floor(hh / 24)}d ${two(hh % 24)}:${two(mm)}:${two(ss)}`
    : `${two(hh)}:${two(mm)}:${two(ss)}`;
}

/** The line printed for a mapping once it listens. */
export function startupLine(m: { id: number; proto: string; listen: Endpoint; target: Endpoint }): string {
  return (
    `portsplice: mapping ${m.id} ${m.proto} ${formatEndpoint(m.listen.host, m.listen.port)} -> ` +
    `${formatEndpoint(m.target.host, m.target.port)}`
  );
}

/**
 * The JSON form of a stats snapshot: the same shape as `proxy.stats()`, plus `time` (ISO 8601),
 * with bigints (the byte counters) as decimal strings.
 */
export function jsonStatsLine(stats: ProxyStats, time: Date): string {
  return JSON.stringify(
    jsonSafe({ time: time.toISOString(), engine: stats.engine, mappings: stats.mappings }),
  );
}

interface Row {
  id: string;
  proto: string;
  listen: string;
  target: string;
  active: string;
  total: string;
  errors: string;
  toTarget: string;
  toClient: string;
  bytes: string;
}

const HEADER: Row = {
  id: 'ID',
  proto: 'PROTO',
  listen: 'LISTEN',
  target: 'TARGET',
  active: 'ACTIVE',
  total: 'TOTAL',
  errors: 'ERRORS',
  toTarget: 'TO TARGET',
  toClient: 'TO CLIENT',
  bytes: 'BYTES',
};
const RIGHT_ALIGNED: ReadonlySet<keyof Row> = new Set([
  'active',
  'total',
  'errors',
  'toTarget',
  'toClient',
  'bytes',
]);

function counts(m: MappingStats): { active: number; total: number; errors: number } {
  return m.proto === 'udp'
    ? { active: m.flows.active, total: m.flows.created, errors: m.dropped.total }
    : { active: m.connections.active, total: m.connections.accepted, errors: m.connections.failed };
}

/** Columns left out first when the table is wider than the terminal. */
const DROP_ORDER: readonly (keyof Row)[] = ['total', 'errors', 'proto', 'bytes', 'target'];

export interface FrameInfo {
  version: string;
  /** Milliseconds since startup. */
  uptimeMs: number;
  /** Terminal size; the frame never exceeds it. */
  columns: number;
  rows: number;
}

interface Rates {
  toTarget: number;
  toClient: number;
}

/** Bytes per second of each mapping between two snapshots (0 for a mapping new in `now`). */
export function rates(prev: ProxyStats | undefined, now: ProxyStats, dtMs: number): Map<number, Rates> {
  const before = new Map(prev?.mappings.map((m) => [m.id, m]));
  const out = new Map<number, Rates>();
  for (const m of now.mappings) {
    const p = before.get(m.id);
    const dt = dtMs / 1000;
    out.set(
      m.id,
      p && dt > 0
        ? {
            toTarget: Number(m.bytes.toTarget - p.bytes.toTarget) / dt,
            toClient: Number(m.bytes.toClient - p.bytes.toClient) / dt,
          }
        : { toTarget: 0, toClient: 0 },
    );
  }
  return out;
}

function truncate(line: string, width: number): string {
  return line.length <= width ? line : `${line.slice(0, Math.max(0, width - 1))}…`;
}

/**
 * The lines of one frame of the live view. When the mappings do not all fit the terminal,
 * the busiest are shown (by throughput, then open connections) and the rest summed up.
 */
export function renderFrame(
  now: ProxyStats,
  prev: ProxyStats | undefined,
  dtMs: number,
  info: FrameInfo,
): string[] {
  const r = rates(prev, now, dtMs);
  const width = Math.max(20, info.columns - 1);
  const height = Math.max(8, info.rows - 1);
  let totalActive = 0;
  let totalIn = 0;
  let totalOut = 0;
  let totalBytes = 0n;
  for (const m of now.mappings) {
    totalActive += counts(m).active;
    totalIn += r.get(m.id)!.toTarget;
    totalOut += r.get(m.id)!.toClient;
    totalBytes += m.bytes.toTarget + m.bytes.toClient;
  }

  // Header, column titles, (rows), totals, legend.
  const room = height - 5;
  let shown = now.mappings;
  let hidden = 0;
  if (shown.length > room) {
    const busy = (m: MappingStats) => r.get(m.id)!.toTarget + r.get(m.id)!.toClient;
    const keep = new Set(
      [...now.mappings]
        .sort((a, b) => busy(b) - busy(a) || counts(b).active - counts(a).active || a.id - b.id)
        .slice(0, room - 1)
        .map((m) => m.id),
    );
    shown = now.mappings.filter((m) => keep.has(m.id));
    hidden = now.mappings.length - shown.length;
  }

  const rows: Row[] = [HEADER];
  for (const m of shown) {
    const c = counts(m);
    const rate = r.get(m.id)!;
    rows.push({
      id: String(m.id),
      proto: m.proto,
      listen: formatEndpoint(m.listen.host, m.listen.port),
      target: formatEndpoint(m.target.host, m.target.port),
      active: String(c.active),
      total: String(c.total),
      errors: String(c.errors),
      toTarget: formatRate(rate.toTarget),
      toClient: formatRate(rate.toClient),
      bytes: formatBytes(m.bytes.toTarget + m.bytes.toClient),
    });
  }
  // On a narrow terminal, leave out the least needed columns rather than cut the rates off.
  const widths = new Map(
    (Object.keys(HEADER) as (keyof Row)[]).map((k) => [k, Math.max(...rows.map((row) => row[k].length))]),
  );
  const keys = (Object.keys(HEADER) as (keyof Row)[]).filter((k) => widths.get(k)! > 0);
  const tableWidth = () => keys.reduce((sum, k) => sum + widths.get(k)!, 0) + 2 * (keys.length - 1);
  for (const drop of DROP_ORDER) {
    if (tableWidth() <= width) break;
    keys.splice(keys.indexOf(drop), 1);
  }
  const lines = [
    truncate(
      `portsplice ${info.version} · ${now.engine} engine · ${now.mappings.length} mapping` +
        `${now.mappings.length === 1 ? '' : 's'} · up ${formatDuration(info.uptimeMs)} · Ctrl-C to stop`,
      width,
    ),
  ];
  for (const row of rows) {
    const cells = keys.map((k) =>
      RIGHT_ALIGNED.has(k) ? row[k].padStart(widths.get(k)!) : row[k].padEnd(widths.get(k)!),
    );
    lines.push(truncate(cells.join('  ').trimEnd(), width));
  }
  if (hidden > 0) lines.push(truncate(`… ${hidden} more mapping${hidden === 1 ? '' : 's'} not shown`, width));
  lines.push(
    truncate(
      `total: ${totalActive} active · to target ${formatRate(totalIn)} · to client ${formatRate(totalOut)} · ` +
        `${formatBytes(totalBytes)} moved`,
      width,
    ),
  );
  lines.push(
    truncate(
      'tcp: ACTIVE/TOTAL connections, ERRORS = target unreachable · udp: ACTIVE/TOTAL flows, ERRORS = dropped datagrams',
      width,
    ),
  );
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Running views
// ---------------------------------------------------------------------------------------------

export interface View {
  /** Print the last frame or line and stop the timer. */
  stop(): void;
}

/** The live view: redrawn in place every `intervalMs` on a terminal. */
export function startLiveView(
  proxy: PortspliceProxy,
  out: Output,
  intervalMs: number,
  version: string,
): View {
  const started = Date.now();
  let prev: ProxyStats | undefined;
  let prevAt = started;
  let drawn = 0;
  const draw = () => {
    const now = proxy.stats();
    const at = Date.now();
    const lines = renderFrame(now, prev, at - prevAt, {
      version,
      uptimeMs: at - started,
      columns: out.columns ?? 80,
      rows: out.rows ?? 24,
    });
    prev = now;
    prevAt = at;
    // Back to the first line of the previous frame, rewrite each line, clear what is left.
    let text = drawn > 0 ? `\r\x1b[${drawn}A` : '';
    for (const line of lines) text += `${line}\x1b[K\n`;
    text += '\x1b[J';
    out.write(text);
    drawn = lines.length;
  };
  draw();
  const timer = setInterval(draw, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      draw();
    },
  };
}

/** One JSON stats line now and every `intervalMs`; `stop()` writes a last one. */
export function startJsonLines(proxy: PortspliceProxy, out: Output, intervalMs: number): View {
  const emit = () => out.write(`${jsonStatsLine(proxy.stats(), new Date())}\n`);
  emit();
  const timer = setInterval(emit, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      emit();
    },
  };
}
