/**
 * Every option of the `portsplice` command, defined once: its flag, where its value goes,
 * which protocol it applies to, and its help text (help.ts prints this table). The values are
 * checked by the library (src/config.ts); a parser here only turns the flag's text into the
 * value the library takes (seconds to milliseconds, "off" to false).
 *
 * To add a mapping option (once src/types.ts and validateMapping have it), add one entry:
 *   { flag: 'max-connections', value: 'N', scope: 'mapping', key: 'maxConnections',
 *     proto: 'tcp', parse: integer, help: 'Connections open at once per mapping.' }
 * `proto` when it applies to one protocol only (the flag then reaches only those mappings);
 * no `value` for a boolean flag (`parse` then gets "true" or "false"); `parse` turns the
 * flag's text into the library's value and leaves the checking to the library. The help,
 * the flag parser and the reload's "restart only" list follow from the entry; config files
 * already take the option inside each mapping, as proxy.add() does.
 */
import {
  DEFAULT_BACKLOG,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_KEEP_ALIVE,
  DEFAULT_UDP_MAX_FLOWS,
  DEFAULT_UDP_TIMEOUT_MS,
  MAX_THREADS,
} from '../config.js';
import type { MappingOptions, ProxyOptions, Proto } from '../types.js';
import { parseListenAddress } from './endpoint.js';
import { UsageError, quote } from './where.js';

/** Upper bound of durations in seconds given to the command (one day). */
export const MAX_SECONDS = 86_400;
export const MIN_INTERVAL = 0.05;
export const DEFAULT_DRAIN_TIMEOUT = 10;
/** Seconds between JSON lines when `--interval` is not given. */
export const DEFAULT_JSON_INTERVAL = 10;
/** Seconds between live-view refreshes when `--interval` is not given. */
export const DEFAULT_LIVE_INTERVAL = 1;

/** The command's own settings: from flags, or the top level of a config file. */
export interface CommandSettings {
  json: boolean;
  /** Seconds between refreshes or JSON lines; undefined: the mode's default. */
  interval?: number;
  metrics?: { host: string; port: number };
  /** One metric series set per port of a `-p` range instead of one per range. */
  metricsPerPort: boolean;
  /** Also Node.js's heap, GC and event-loop families (nodejs_*). */
  metricsNodejs: boolean;
  /** Seconds open connections get to finish after SIGTERM/SIGINT or when a reload removes them. */
  drainTimeout: number;
}

interface Common {
  /** The long flag, without dashes; `--name`, `-name`, `--name=value` and `-name=value` all work. */
  flag: string;
  /** A one-letter alias. */
  short?: string;
  /** What the value is called in the help; absent for a flag without a value (`--json`). */
  value?: string;
  help: string;
}

/** Where a value goes. */
export type OptionDef =
  | (Common & {
      /** A per-mapping option: applies to each mapping (of `proto`) that does not set `key` itself. */
      scope: 'mapping';
      key: keyof MappingOptions;
      proto?: Proto;
      parse(text: string, where: string): unknown;
    })
  | (Common & {
      /** An option of createProxy(); also a top-level key of a config file. */
      scope: 'proxy';
      key: keyof ProxyOptions;
      parse(text: string, where: string): unknown;
    })
  | (Common & {
      /** The command's own setting; also a top-level key of a config file (text or JSON value). */
      scope: 'command';
      key: keyof CommandSettings;
      parse(value: unknown, where: string): unknown;
    })
  | (Common & {
      /** Handled by the argument parser itself. */
      scope: 'cli';
      key: 'publish' | 'config' | 'help' | 'version';
    });

/** An integer's text as a number, anything else as it is: the library says what is wrong with it. */
const integer = (text: string): unknown => (/^[+-]?\d+(\.\d+)?$/.test(text) ? Number(text) : text);

/** Seconds (decimals allowed) from `min` to MAX_SECONDS, as flag text or a JSON number. */
function seconds(value: unknown, where: string, min: number): number {
  const n =
    typeof value === 'number'
      ? value
      : typeof value === 'string' && /^\d+(\.\d+)?$/.test(value)
        ? Number(value)
        : NaN;
  if (!(n >= min && n <= MAX_SECONDS)) {
    throw new UsageError(
      `${where} must be a number of seconds from ${min} to ${MAX_SECONDS}, got ${quote(value)}`,
    );
  }
  return n;
}

/** Seconds to the library's milliseconds (which it checks). */
function milliseconds(text: string, where: string): number {
  if (!/^\d+(\.\d+)?$/.test(text))
    throw new UsageError(`${where} must be a number of seconds, got ${quote(text)}`);
  return Math.round(Number(text) * 1000);
}

/** `off`, or `IDLE[,INTERVAL[,COUNT]]` in seconds. */
function keepAlive(text: string, where: string): MappingOptions['keepAlive'] {
  if (text === 'off' || text === 'false') return false;
  const parts = text.split(',');
  if (parts.length > 3 || parts.some((p) => !/^\d+(\.\d+)?$/.test(p))) {
    throw new UsageError(
      `${where} must be off or IDLE[,INTERVAL[,COUNT]] (seconds, seconds, probes), got ${quote(text)}`,
    );
  }
  const [idle, interval, count] = parts;
  return {
    idleMs: Math.round(Number(idle) * 1000),
    ...(interval !== undefined && { intervalMs: Math.round(Number(interval) * 1000) }),
    ...(count !== undefined && { count: Number(count) }),
  };
}

/** A JSON boolean, or the "true"/"false" the parser passes for a flag without a value. */
function boolean(value: unknown, where: string): boolean {
  if (typeof value === 'boolean') return value;
  if (value === 'true' || value === 'false') return value === 'true';
  throw new UsageError(`${where} must be true or false, got ${quote(value)}`);
}

export const OPTIONS: readonly OptionDef[] = [
  {
    flag: 'publish',
    short: 'p',
    value: '[HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT[/tcp|/udp]',
    scope: 'cli',
    key: 'publish',
    help: 'Listen on HOST_IP:HOST_PORT and forward to TARGET_IP:TARGET_PORT. Repeatable.',
  },
  {
    flag: 'config',
    short: 'c',
    value: 'FILE',
    scope: 'cli',
    key: 'config',
    help: 'Mappings and settings from a JSON file (below). Repeatable; SIGHUP reads the files again.',
  },
  {
    flag: 'engine',
    value: 'splice|stream',
    scope: 'proxy',
    key: 'engine',
    parse: (text) => text,
    help: 'Data path (default: splice on Linux).',
  },
  {
    flag: 'threads',
    value: 'auto|N',
    scope: 'proxy',
    key: 'threads',
    parse: (text) => (text === 'auto' ? text : integer(text)),
    help:
      'Event-loop threads of the splice engine: auto (the default: one while idle, more under load, ' +
      `up to the CPUs this process may use) or exactly N (1-${MAX_THREADS}).`,
  },
  {
    flag: 'pipe-size',
    value: 'BYTES',
    scope: 'proxy',
    key: 'pipeSize',
    parse: integer,
    help: "Capacity of each pipe of the splice engine (default 1048576 as root, else the kernel's 65536).",
  },
  {
    flag: 'max-pipes',
    value: 'N',
    scope: 'proxy',
    key: 'maxPipes',
    parse: integer,
    help: "Pipes in use per thread before copying instead (default 0: no limit but the kernel's).",
  },
  {
    flag: 'connect-timeout',
    value: 'SECONDS',
    scope: 'mapping',
    key: 'connectTimeoutMs',
    proto: 'tcp',
    parse: milliseconds,
    help: `Give up connecting to the target after this long (default ${DEFAULT_CONNECT_TIMEOUT_MS / 1000}).`,
  },
  {
    flag: 'backlog',
    value: 'N',
    scope: 'mapping',
    key: 'backlog',
    proto: 'tcp',
    parse: integer,
    help: `Listen backlog (default ${DEFAULT_BACKLOG}, capped by net.core.somaxconn).`,
  },
  {
    flag: 'keepalive',
    value: 'off|IDLE[,INTERVAL[,COUNT]]',
    scope: 'mapping',
    key: 'keepAlive',
    proto: 'tcp',
    parse: keepAlive,
    help:
      'Keep-alive on both sockets: seconds idle, seconds between probes, probes (default ' +
      `${DEFAULT_KEEP_ALIVE.idleMs / 1000},${DEFAULT_KEEP_ALIVE.intervalMs / 1000},${DEFAULT_KEEP_ALIVE.count}).`,
  },
  {
    flag: 'proxy-protocol',
    value: 'v1|v2',
    scope: 'mapping',
    key: 'proxyProtocol',
    proto: 'tcp',
    parse: (text) => text,
    help:
      "Send a PROXY protocol header with the client's address to the target before its bytes " +
      '(only to a target that expects it: nginx proxy_protocol, HAProxy accept-proxy).',
  },
  {
    flag: 'max-connections',
    value: 'N',
    scope: 'mapping',
    key: 'maxConnections',
    proto: 'tcp',
    parse: integer,
    help: 'Connections open at once per mapping; beyond it new ones wait in the listen backlog (default: no limit).',
  },
  {
    flag: 'idle-timeout',
    value: 'SECONDS',
    scope: 'mapping',
    key: 'idleTimeoutMs',
    proto: 'tcp',
    parse: milliseconds,
    help: 'Reset a connection after this long with no byte in either direction (default: never).',
  },
  {
    flag: 'udp-timeout',
    value: 'SECONDS',
    scope: 'mapping',
    key: 'udpTimeoutMs',
    proto: 'udp',
    parse: milliseconds,
    help: `A flow expires after this long without a datagram either way (default ${DEFAULT_UDP_TIMEOUT_MS / 1000}).`,
  },
  {
    flag: 'udp-max-flows',
    value: 'N',
    scope: 'mapping',
    key: 'udpMaxFlows',
    proto: 'udp',
    parse: integer,
    help: `Flows kept per mapping; beyond it the least recently active goes (default ${DEFAULT_UDP_MAX_FLOWS}).`,
  },
  {
    flag: 'json',
    scope: 'command',
    key: 'json',
    parse: boolean,
    help:
      'Print one JSON stats line per interval on stdout: {"time", "engine", "mappings": [...]}, each ' +
      'mapping as proxy.stats() returns it, byte counters as decimal strings; the first line at ' +
      'startup, the last at shutdown.',
  },
  {
    flag: 'interval',
    value: 'SECONDS',
    scope: 'command',
    key: 'interval',
    parse: (value, where) => seconds(value, where, MIN_INTERVAL),
    help: `Refresh period (default ${DEFAULT_LIVE_INTERVAL} for the live view, ${DEFAULT_JSON_INTERVAL} with --json).`,
  },
  {
    flag: 'metrics',
    value: '[HOST]:PORT',
    scope: 'command',
    key: 'metrics',
    parse: (value, where) => {
      if (typeof value !== 'string')
        throw new UsageError(`${where} must be a string "[HOST]:PORT", got ${quote(value)}`);
      return parseListenAddress(value, where);
    },
    help:
      'Serve Prometheus metrics on http://HOST:PORT/metrics and a health check on /healthz (HOST ' +
      'defaults to 0.0.0.0; [::1]:19110 for IPv6). Series are labelled mapping="NAME" (a config ' +
      'file\'s "name") or mapping="PROTO/LISTEN"; a -p range is one series set.',
  },
  {
    flag: 'metrics-per-port',
    scope: 'command',
    key: 'metricsPerPort',
    parse: boolean,
    help: 'One metric series set per port of a -p range instead (needs --metrics).',
  },
  {
    flag: 'metrics-nodejs',
    scope: 'command',
    key: 'metricsNodejs',
    parse: boolean,
    help: "Also Node.js's heap, GC and event-loop families, nodejs_* (needs --metrics).",
  },
  {
    flag: 'drain-timeout',
    value: 'SECONDS',
    scope: 'command',
    key: 'drainTimeout',
    parse: (value, where) => seconds(value, where, 0),
    help:
      `On SIGTERM/SIGINT stop accepting at once and give open connections this long to finish ` +
      `(default ${DEFAULT_DRAIN_TIMEOUT}); a second signal exits at once.`,
  },
  { flag: 'help', short: 'h', scope: 'cli', key: 'help', help: 'Show this help.' },
  { flag: 'version', short: 'v', scope: 'cli', key: 'version', help: 'Show the version.' },
];
