/**
 * What the CLI prints while it runs: the live terminal view (redrawn in place), JSON stats
 * lines for machines, and startup lines for logs. The formatting functions are pure.
 */
import type { Endpoint, MappingStats, PortspliceProxy, ProxyStats } from '../types.js';
import { formatEndpoint } from './endpoint.js';
import { endpointRange, mappingLabel } from './groups.js';
import { jsonSafe } from '../stats.js';

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

type Listener = { id: number; proto: string; listen: Endpoint; target: Endpoint };

/** `tcp 0.0.0.0:8080 -> 10.0.0.2:80`: a mapping that listens. */
export function describeMapping(m: Listener): string {
  return `${m.proto} ${formatEndpoint(m.listen.host, m.listen.port)} -> ${formatEndpoint(m.target.host, m.target.port)}`;
}

/** The line printed for a mapping once it listens. */
export function startupLine(m: Listener): string {
  return `portsplice: mapping ${m.id} ${describeMapping(m)}`;
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
  mapping: string;
  target: string;
  active: string;
  total: string;
  errors: string;
  toTarget: string;
  toClient: string;
  bytes: string;
}

const HEADER: Row = {
  mapping: 'MAPPING',
  target: 'TARGET',
  active: 'ACTIVE',
  total: 'TOTAL',
  errors: 'ERRORS',
  toTarget: 'TO TARGET',
  toClient: 'TO CLIENT',
  bytes: 'BYTES',
};
const COLUMNS = Object.keys(HEADER) as (keyof Row)[];
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

/**
 * How a row is made to fit: leave out TARGET, cut the MAPPING labels to 24 characters, leave
 * out BYTES and TOTAL, then cut the labels to 12. ERRORS and the rates are never dropped: with
 * the labels cut they stay within 80 columns.
 */
const FIT_STEPS: readonly ({ drop: keyof Row } | { mappingWidth: number })[] = [
  { drop: 'target' },
  { mappingWidth: 24 },
  { drop: 'bytes' },
  { drop: 'total' },
  { mappingWidth: 12 },
];

/** What the keys change: the order of the rows and whether `-p` ranges are folded. */
export interface ViewState {
  /** `activity`: busiest first (throughput, then open connections); `errors`: most errors first. */
  sort: 'activity' | 'errors';
  /** Show each port of a range on its own row instead of one row per range. */
  expanded: boolean;
}

export const INITIAL_VIEW_STATE: Readonly<ViewState> = Object.freeze({ sort: 'activity', expanded: false });

/**
 * One key press in the live view: `s` toggles the sort, `e` expands or folds the ranges, `q`
 * (or Ctrl-C, which a terminal in raw mode delivers as a byte instead of SIGINT) quits.
 */
export function handleKey(state: ViewState, key: string): { state: ViewState; quit?: true } {
  switch (key) {
    case 'q':
    case 'Q':
    case '\x03':
      return { state, quit: true };
    case 's':
    case 'S':
      return { state: { ...state, sort: state.sort === 'activity' ? 'errors' : 'activity' } };
    case 'e':
    case 'E':
      return { state: { ...state, expanded: !state.expanded } };
    default:
      return { state };
  }
}

export interface FrameInfo {
  version: string;
  /** Milliseconds since startup. */
  uptimeMs: number;
  /** Terminal size; the frame never exceeds it. */
  columns: number;
  rows: number;
  /** Each mapping's label (see groups.ts); mappings sharing one are a single row unless expanded. */
  labels?: ReadonlyMap<number, string>;
  state?: ViewState;
  /** During a drain: the signal that began it and the milliseconds left. */
  drain?: { signal: string; leftMs: number };
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

/** One row's figures: a mapping, or the sum of the mappings of a folded range. */
interface Unit {
  label: string;
  members: MappingStats[];
  active: number;
  total: number;
  errors: number;
  toTarget: number;
  toClient: number;
  bytes: bigint;
  /** Position of its first mapping: the order among equals. */
  order: number;
}

function units(now: ProxyStats, r: Map<number, Rates>, info: FrameInfo): Unit[] {
  const expanded = info.state?.expanded ?? false;
  const byLabel = new Map<string, Unit>();
  now.mappings.forEach((m, order) => {
    const label = (!expanded && info.labels?.get(m.id)) || mappingLabel(m);
    let unit = byLabel.get(label);
    if (!unit) {
      unit = {
        label,
        members: [],
        active: 0,
        total: 0,
        errors: 0,
        toTarget: 0,
        toClient: 0,
        bytes: 0n,
        order,
      };
      byLabel.set(label, unit);
    }
    const c = counts(m);
    const rate = r.get(m.id)!;
    unit.members.push(m);
    unit.active += c.active;
    unit.total += c.total;
    unit.errors += c.errors;
    unit.toTarget += rate.toTarget;
    unit.toClient += rate.toClient;
    unit.bytes += m.bytes.toTarget + m.bytes.toClient;
  });
  const busy = (u: Unit) => u.toTarget + u.toClient;
  const byActivity = (a: Unit, b: Unit) => busy(b) - busy(a) || b.active - a.active;
  const compare =
    info.state?.sort === 'errors'
      ? (a: Unit, b: Unit) => b.errors - a.errors || byActivity(a, b) || a.order - b.order
      : (a: Unit, b: Unit) => byActivity(a, b) || a.order - b.order;
  return [...byLabel.values()].sort(compare);
}

/**
 * The lines of one frame of the live view: one row per mapping, or per `-p` range while the
 * ranges are folded, sorted by activity or by errors. When the rows do not all fit the
 * terminal, the first ones in that order are shown and the rest counted.
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
  const room = height - 4;
  let shown = units(now, r, info);
  let hidden = 0;
  if (shown.length > room) {
    hidden = shown.length - (room - 1);
    shown = shown.slice(0, room - 1);
  }

  const rows: Row[] = [HEADER];
  for (const u of shown) {
    const first = u.members[0]!;
    rows.push({
      mapping: u.label,
      target: endpointRange(
        first.target.host,
        u.members.map((m) => m.target.port),
      ),
      active: String(u.active),
      total: String(u.total),
      errors: String(u.errors),
      toTarget: formatRate(u.toTarget),
      toClient: formatRate(u.toClient),
      bytes: formatBytes(u.bytes),
    });
  }
  // On a narrow terminal, leave out the least needed columns, then cut the labels short,
  // rather than lose the errors or the rates.
  const widths = new Map(COLUMNS.map((k) => [k, Math.max(...rows.map((row) => row[k].length))]));
  const keys = [...COLUMNS];
  const tableWidth = () => keys.reduce((sum, k) => sum + widths.get(k)!, 0) + 2 * (keys.length - 1);
  for (const step of FIT_STEPS) {
    const over = tableWidth() - width;
    if (over <= 0) break;
    if ('drop' in step) keys.splice(keys.indexOf(step.drop), 1);
    else
      widths.set(
        'mapping',
        Math.max(step.mappingWidth, Math.min(widths.get('mapping')!, widths.get('mapping')! - over)),
      );
  }
  const cell = (row: Row, k: keyof Row) => {
    const w = widths.get(k)!;
    const text = truncate(row[k], w);
    return RIGHT_ALIGNED.has(k) ? text.padStart(w) : text.padEnd(w);
  };
  const state = info.state ?? INITIAL_VIEW_STATE;
  const head = info.drain
    ? `portsplice · DRAINING after ${info.drain.signal}: ${Math.ceil(Math.max(0, info.drain.leftMs) / 1000)} s left · ` +
      `${totalActive} open · q to quit now`
    : `portsplice ${info.version} · ${now.engine} engine · ${now.mappings.length} mapping` +
      `${now.mappings.length === 1 ? '' : 's'} · up ${formatDuration(info.uptimeMs)}`;
  const lines = [truncate(head, width)];
  for (const row of rows)
    lines.push(
      truncate(
        keys
          .map((k) => cell(row, k))
          .join('  ')
          .trimEnd(),
        width,
      ),
    );
  if (hidden > 0) lines.push(truncate(`… ${hidden} more row${hidden === 1 ? '' : 's'} not shown`, width));
  lines.push(
    truncate(
      `total: ${totalActive} active · to target ${formatRate(totalIn)} · to client ${formatRate(totalOut)} · ` +
        `${formatBytes(totalBytes)} moved`,
      width,
    ),
  );
  lines.push(
    truncate(
      `s sort (${state.sort}) · e ${state.expanded ? 'fold' : 'expand'} · q quit · ` +
        'ERRORS: tcp unreachable, udp dropped',
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
  /** A drain began: show its countdown until `stop()`. */
  draining?(signal: string, deadline: number): void;
}

export interface LiveViewOptions {
  /** Each mapping's label, read at every frame (the mappings change on reload). */
  labels?: () => ReadonlyMap<number, string>;
  /** The terminal's keyboard: read in raw mode while the view runs (a TTY only). */
  input?: NodeJS.ReadStream;
  /** `q` or Ctrl-C was pressed. */
  onQuit?: () => void;
}

/** The live view: redrawn in place every `intervalMs` on a terminal, and at every key. */
export function startLiveView(
  proxy: PortspliceProxy,
  out: Output,
  intervalMs: number,
  version: string,
  options: LiveViewOptions = {},
): View {
  const started = Date.now();
  // The last two snapshots: a frame's rates are the difference between them.
  let prev: { stats: ProxyStats; at: number } | undefined;
  let last: { stats: ProxyStats; at: number } | undefined;
  let drawn = 0;
  let state: ViewState = INITIAL_VIEW_STATE;
  let drain: { signal: string; deadline: number } | undefined;
  // `fresh`: take a new snapshot (the timer); a key redraws the last one in its new order.
  const draw = (fresh = true) => {
    const at = Date.now();
    if (fresh || !last) {
      prev = last;
      last = { stats: proxy.stats(), at };
    }
    const lines = renderFrame(last.stats, prev?.stats, prev ? last.at - prev.at : 0, {
      version,
      uptimeMs: at - started,
      columns: out.columns ?? 80,
      rows: out.rows ?? 24,
      labels: options.labels?.(),
      state,
      ...(drain && { drain: { signal: drain.signal, leftMs: drain.deadline - at } }),
    });
    // Back to the first line of the previous frame, rewrite each line, clear what is left.
    let text = drawn > 0 ? `\r\x1b[${drawn}A` : '';
    for (const line of lines) text += `${line}\x1b[K\n`;
    text += '\x1b[J';
    out.write(text);
    drawn = lines.length;
  };
  const tick = () => draw();

  const input = options.input?.isTTY === true ? options.input : undefined;
  const onData = (chunk: string | Buffer) => {
    for (const key of String(chunk)) {
      const result = handleKey(state, key);
      state = result.state;
      if (result.quit) options.onQuit?.();
    }
    draw(false);
  };
  const restore = () => input?.setRawMode(false);
  if (input) {
    input.setRawMode(true);
    input.setEncoding('utf8');
    input.on('data', onData);
    input.resume();
    // A second signal exits with process.exit(): leave the terminal as it was.
    process.once('exit', restore);
  }

  draw();
  const timer = setInterval(tick, intervalMs);
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      tick();
      if (input) {
        input.off('data', onData);
        restore();
        input.pause();
        process.off('exit', restore);
      }
    },
    draining(signal: string, deadline: number) {
      drain = { signal, deadline };
      tick();
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
