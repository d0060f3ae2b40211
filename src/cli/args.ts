/**
 * Command-line parsing for `portsplice`. Everything here is pure: it turns argument strings
 * (and the text of a config file, read through an injected function) into mapping options
 * for `proxy.add()` and CLI settings, or throws a `UsageError` that says what is wrong.
 * Nothing is started until parsing has fully succeeded.
 */
import { isIP } from 'node:net';
import { checkKeepAlive, checkLimits, MAX_UDP_FLOWS } from '../config.js';
import type { EngineName, MappingOptions, Proto } from '../types.js';

/** A bad command line or config file: the message says what is wrong (the CLI exits 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Longest port range one `-p` may span. */
export const MAX_RANGE = 10_000;
export const MAX_THREADS = 64;
/** Upper bound of `--interval` and `--drain-timeout`, in seconds (one day). */
export const MAX_SECONDS = 86_400;
export const MIN_INTERVAL = 0.05;
export const DEFAULT_DRAIN_TIMEOUT = 10;

/** One mapping to add, with where it came from (for error messages). */
export interface MappingSpec {
  options: MappingOptions;
  /** e.g. `-p 8000-8099:10.1.0.2:8000-8099` or `ports.json: mappings[2]`. */
  source: string;
}

export interface CliOptions {
  mappings: MappingSpec[];
  engine?: EngineName;
  threads?: number | 'auto';
  /** From a config file only. */
  pipeSize?: number;
  /** From a config file only. */
  maxPipes?: number;
  json: boolean;
  /** Seconds between refreshes or JSON lines; undefined: the mode's default. */
  interval?: number;
  metrics?: { host: string; port: number };
  /** Seconds open connections get to finish after SIGTERM/SIGINT. */
  drainTimeout: number;
  help: boolean;
  version: boolean;
  /** docker-proxy's `-use-listen-fd` was given (the Node CLI rejects it). */
  useListenFd: boolean;
  /** The --config files, in order: what SIGHUP reads again. */
  configFiles: string[];
}

/** Reads a config file; injected so that parsing stays pure and testable. */
export type ReadFile = (path: string) => string;

export const HELP = `Usage: portsplice [options] -p SPEC [-p SPEC ...]
       portsplice [options] --config FILE
       portsplice -proto tcp|udp -host-ip IP -host-port PORT -container-ip IP -container-port PORT
       portsplice docker-proxy [path | install [DIR]]   (see portsplice docker-proxy --help)

Forwards TCP and UDP ports to other addresses; one process serves many ports.

Mappings:
  -p, --publish [HOST_IP:]HOST_PORT:TARGET_IP:TARGET_PORT[/tcp|/udp]
                         Listen on HOST_IP:HOST_PORT (HOST_IP defaults to 0.0.0.0) and
                         forward to TARGET_IP:TARGET_PORT. Repeatable. Ports may be ranges
                         of equal length on both sides (8000-8099:10.1.0.2:9000-9099, at
                         most ${MAX_RANGE} ports). IPv6 addresses go in brackets:
                         [::1]:8080:[fd00::2]:80. A single HOST_PORT of 0 picks a free port.
  -c, --config FILE      JSON: {"engine", "threads", "pipeSize", "maxPipes", "mappings": [...]}
                         (or just the array), each mapping an object as proxy.add() takes,
                         e.g. {"proto": "udp", "listen": {"host": "0.0.0.0", "port": 53},
                         "target": {"host": "10.0.0.2", "port": 53}, "udpTimeoutMs": 30000},
                         or a -p SPEC string.

Options:
  --engine splice|stream Data path (default: splice on Linux).
  --threads auto|N       Native event-loop threads for the splice engine: auto (the default:
                         one while idle, more under load, up to the CPUs this process may
                         use) or exactly N (1-${MAX_THREADS}).
  --json                 Print one JSON stats line per interval on stdout:
                         {"time", "engine", "mappings": [...]}, each mapping as proxy.stats()
                         returns it, with byte counters as decimal strings (they can exceed
                         2^53); the first line comes at startup, the last at shutdown.
  --interval SECONDS     Refresh period (default 1 for the live view, 10 with --json).
  --metrics [HOST]:PORT  Serve Prometheus metrics on http://HOST:PORT/metrics (HOST defaults
                         to 0.0.0.0; [::1]:9100 for IPv6).
  --drain-timeout SECONDS
                         On SIGTERM/SIGINT stop accepting at once and give open connections
                         this long to finish (default ${DEFAULT_DRAIN_TIMEOUT}); a second signal exits at once.
                         SIGHUP reloads the --config files (a bad file changes nothing).
  --max-connections N    TCP mappings of -p: at most N connections open at once per mapping;
                         beyond it new ones wait in the listen backlog until one ends.
  --idle-timeout MS      TCP mappings of -p: reset a connection after MS milliseconds with
                         no byte in either direction (default: never).
                         (In --config files: "maxConnections" and "idleTimeoutMs" per mapping.)
  -h, --help             Show this help.
  -v, --version          Show the version.

On a terminal, a live view shows connections and throughput per mapping. Otherwise (and
without --json) one line per mapping is printed at startup, then only errors.

docker-proxy compatibility (Go flag syntax: -flag value, -flag=value, --flag value):
  -proto tcp|udp         Protocol (default tcp).
  -host-ip IP            Listen address (default 0.0.0.0).
  -host-port PORT        Listen port.
  -container-ip IP       Target address.
  -container-port PORT   Target port.
  -use-listen-fd         Not supported by the Node CLI: use the native
                         portsplice-docker-proxy ('portsplice docker-proxy' prints its path).
  When fd 3 is a pipe, "0\\n" is written to it once every port is listening, or "1\\n" and
  the error before exiting 1.

Exit status: 0 after a clean shutdown, 1 when a port cannot be opened (nothing is left
listening), 2 for bad arguments.`;

const HOST_NAME =
  /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;

function quote(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? 'an array' : 'an object';
}

/** An IP literal or a DNS name (as the library accepts); `what` names it in the error. */
function checkHost(text: string, what: string): string {
  if (isIP(text) !== 0) return text;
  if (text.includes(':')) {
    throw new UsageError(`${what}: ${quote(text)} is not a valid IPv6 address`);
  }
  // Only digits and dots: a malformed IPv4 address, not a host name.
  if (/^[\d.]+$/.test(text) || !HOST_NAME.test(text)) {
    throw new UsageError(`${what}: ${quote(text)} is not an IP address or host name`);
  }
  return text;
}

function checkIp(text: string, what: string): string {
  if (isIP(text) === 0) throw new UsageError(`${what}: ${quote(text)} is not an IP address`);
  return text;
}

/** A decimal port number from `min` to 65535. */
function parsePort(text: string, what: string, min: number): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < min || Number(text) > 65535) {
    throw new UsageError(`${what} must be a number from ${min} to 65535, got ${quote(text)}`);
  }
  return Number(text);
}

interface PortRange {
  first: number;
  count: number;
}

/** `PORT` or `FIRST-LAST`. Port 0 is allowed only as a single host port (`allowZero`). */
function parsePortRange(text: string, what: string, allowZero: boolean): PortRange {
  const dash = text.indexOf('-');
  if (dash < 0) {
    if (text === '') throw new UsageError(`${what} is missing`);
    return { first: parsePort(text, what, allowZero ? 0 : 1), count: 1 };
  }
  const a = text.slice(0, dash);
  const b = text.slice(dash + 1);
  const first = parsePort(a, `${what} range start`, 1);
  const last = parsePort(b, `${what} range end`, 1);
  if (last < first) {
    throw new UsageError(`${what} range ${quote(text)} is reversed: ${first} is greater than ${last}`);
  }
  const count = last - first + 1;
  if (count > MAX_RANGE) {
    throw new UsageError(`${what} range ${quote(text)} has ${count} ports; at most ${MAX_RANGE} are allowed`);
  }
  return { first, count };
}

function parseProto(text: string, what: string): Proto {
  const p = text.toLowerCase();
  if (p === 'tcp' || p === 'udp') return p;
  if (p === 'sctp') throw new UsageError(`${what}: sctp is not supported (tcp or udp)`);
  throw new UsageError(`${what}: protocol must be tcp or udp, got ${quote(text)}`);
}

/** Splits on ':' outside brackets; a bracketed field keeps its brackets. */
function splitFields(text: string, what: string): string[] {
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    let field: string;
    if (text[i] === '[') {
      const close = text.indexOf(']', i);
      if (close < 0) throw new UsageError(`${what}: unclosed '[' in ${quote(text)}`);
      field = text.slice(i, close + 1);
      i = close + 1;
      if (i < text.length && text[i] !== ':') {
        throw new UsageError(`${what}: expected ':' after ${quote(field)} in ${quote(text)}`);
      }
    } else {
      const colon = text.indexOf(':', i);
      field = colon < 0 ? text.slice(i) : text.slice(i, colon);
      i = colon < 0 ? text.length : colon;
      if (field.includes('[') || field.includes(']')) {
        throw new UsageError(`${what}: misplaced bracket in ${quote(text)}`);
      }
    }
    fields.push(field);
    if (i >= text.length) return fields;
    i++; // the ':'
    if (i >= text.length) {
      fields.push('');
      return fields;
    }
  }
}

/** A host field: `[IPv6]`, an IPv4 address or a host name. */
function parseHostField(field: string, what: string): string {
  if (field === '') throw new UsageError(`${what} is empty`);
  if (field.startsWith('[')) {
    const inner = field.slice(1, -1);
    if (isIP(inner) !== 6) {
      throw new UsageError(`${what}: ${quote(inner)} in brackets is not an IPv6 address`);
    }
    return inner;
  }
  return checkHost(field, what);
}

/**
 * Parses one `-p` value, `[HOST_IP:]HOST_PORT:TARGET_IP:TARGET_PORT[/tcp|/udp]`, into one
 * mapping per port of the range.
 */
export function parsePortSpec(spec: string): MappingOptions[] {
  const what = `-p ${quote(spec)}`;
  if (spec === '') throw new UsageError('-p needs a value: [HOST_IP:]HOST_PORT:TARGET_IP:TARGET_PORT');
  if (/\s/.test(spec)) throw new UsageError(`${what}: must not contain whitespace`);
  let body = spec;
  let proto: Proto = 'tcp';
  const slash = spec.lastIndexOf('/');
  if (slash >= 0) {
    body = spec.slice(0, slash);
    proto = parseProto(spec.slice(slash + 1), what);
  }
  if (body.endsWith(':')) throw new UsageError(`${what}: ends with ':' where the target port should be`);
  const fields = splitFields(body, what);
  if (fields.length > 4) {
    throw new UsageError(
      `${what}: too many ':' (IPv6 addresses must be in brackets, e.g. [::1]:8080:[::1]:80)`,
    );
  }
  if (fields.length < 3) {
    throw new UsageError(
      `${what}: expected [HOST_IP:]HOST_PORT:TARGET_IP:TARGET_PORT` +
        (fields.length === 2 ? ' (the target address is missing)' : ''),
    );
  }
  const [listenHostField, hostPortField, targetHostField, targetPortField] =
    fields.length === 4 ? fields : ['0.0.0.0', ...fields];
  const listenHost = parseHostField(listenHostField!, `${what}: host IP`);
  const hostPorts = parsePortRange(hostPortField!, `${what}: host port`, true);
  const targetHost = parseHostField(targetHostField!, `${what}: target IP`);
  const targetPorts = parsePortRange(targetPortField!, `${what}: target port`, false);
  if (hostPorts.count !== targetPorts.count) {
    throw new UsageError(
      `${what}: the host side has ${hostPorts.count} port${hostPorts.count === 1 ? '' : 's'} ` +
        `and the target side ${targetPorts.count}; port ranges must be the same length`,
    );
  }
  const mappings: MappingOptions[] = [];
  for (let i = 0; i < hostPorts.count; i++) {
    mappings.push({
      proto,
      listen: { host: listenHost, port: hostPorts.first + i },
      target: { host: targetHost, port: targetPorts.first + i },
    });
  }
  return mappings;
}

/** `host:port` with brackets around IPv6 addresses. */
export function formatEndpoint(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

// ---------------------------------------------------------------------------------------------
// Config file
// ---------------------------------------------------------------------------------------------

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function checkKeys(value: Record<string, unknown>, where: string, allowed: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new UsageError(`${where}.${key} is not a known option (expected one of: ${allowed.join(', ')})`);
    }
  }
}

function checkInteger(value: unknown, where: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`${where} must be an integer from ${min} to ${max}, got ${quote(value)}`);
  }
  return value;
}

function checkString(value: unknown, where: string): string {
  if (typeof value !== 'string') throw new UsageError(`${where} must be a string, got ${quote(value)}`);
  return value;
}

const MAPPING_KEYS = [
  'proto',
  'listen',
  'target',
  'connectTimeoutMs',
  'backlog',
  'ipv6Only',
  'udpTimeoutMs',
  'udpMaxFlows',
  'keepAlive',
  'maxConnections',
  'idleTimeoutMs',
] as const;
const INT_MAX = 2 ** 31 - 1;

/** Validates one mapping object of a config file (`proto` defaults to tcp). */
function parseConfigMapping(value: unknown, where: string): MappingOptions {
  if (!isObject(value)) {
    throw new UsageError(`${where} must be an object or a -p string, got ${quote(value)}`);
  }
  checkKeys(value, where, MAPPING_KEYS);
  const proto =
    value.proto === undefined
      ? 'tcp'
      : parseProto(checkString(value.proto, `${where}.proto`), `${where}.proto`);
  if (!isObject(value.listen)) throw new UsageError(`${where}.listen must be an object { host?, port }`);
  checkKeys(value.listen, `${where}.listen`, ['host', 'port']);
  if (!isObject(value.target)) throw new UsageError(`${where}.target must be an object { host, port }`);
  checkKeys(value.target, `${where}.target`, ['host', 'port']);
  const listenHost =
    value.listen.host === undefined
      ? '0.0.0.0'
      : checkHost(checkString(value.listen.host, `${where}.listen.host`), `${where}.listen.host`);
  if (value.target.host === undefined) throw new UsageError(`${where}.target.host is required`);
  const mapping: MappingOptions = {
    proto,
    listen: { host: listenHost, port: checkInteger(value.listen.port, `${where}.listen.port`, 0, 65535) },
    target: {
      host: checkHost(checkString(value.target.host, `${where}.target.host`), `${where}.target.host`),
      port: checkInteger(value.target.port, `${where}.target.port`, 1, 65535),
    },
  };
  if (value.connectTimeoutMs !== undefined) {
    mapping.connectTimeoutMs = checkInteger(value.connectTimeoutMs, `${where}.connectTimeoutMs`, 1, INT_MAX);
  }
  if (value.backlog !== undefined)
    mapping.backlog = checkInteger(value.backlog, `${where}.backlog`, 1, 65535);
  if (value.ipv6Only !== undefined) {
    if (typeof value.ipv6Only !== 'boolean') {
      throw new UsageError(`${where}.ipv6Only must be a boolean, got ${quote(value.ipv6Only)}`);
    }
    mapping.ipv6Only = value.ipv6Only;
  }
  if (value.udpTimeoutMs !== undefined) {
    mapping.udpTimeoutMs = checkInteger(value.udpTimeoutMs, `${where}.udpTimeoutMs`, 1, INT_MAX);
  }
  if (value.udpMaxFlows !== undefined) {
    mapping.udpMaxFlows = checkInteger(value.udpMaxFlows, `${where}.udpMaxFlows`, 1, MAX_UDP_FLOWS);
  }
  if (value.keepAlive !== undefined) {
    try {
      checkKeepAlive(value.keepAlive, proto);
    } catch (error) {
      throw new UsageError(`${where}.${(error as Error).message}`);
    }
    mapping.keepAlive = value.keepAlive as MappingOptions['keepAlive'];
  }
  if (value.maxConnections !== undefined || value.idleTimeoutMs !== undefined) {
    let limits;
    try {
      limits = checkLimits(value, proto);
    } catch (error) {
      throw new UsageError(`${where}.${(error as Error).message}`);
    }
    if (value.maxConnections !== undefined) mapping.maxConnections = limits.maxConnections;
    if (value.idleTimeoutMs !== undefined) mapping.idleTimeoutMs = limits.idleTimeoutMs;
  }
  return mapping;
}

export interface ConfigFile {
  mappings: MappingSpec[];
  engine?: EngineName;
  threads?: number | 'auto';
  pipeSize?: number;
  maxPipes?: number;
}

/**
 * Parses the text of a config file: `{ engine?, threads?, pipeSize?, maxPipes?, mappings }` or
 * just the mappings array. Each mapping is an object as `proxy.add()` takes, or a `-p` string.
 */
export function parseConfig(text: string, file: string): ConfigFile {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${file}: invalid JSON: ${(err as Error).message}`);
  }
  const result: ConfigFile = { mappings: [] };
  let list: unknown;
  let prefix = file;
  if (Array.isArray(data)) {
    list = data;
  } else if (isObject(data)) {
    checkKeys(data, file, ['engine', 'threads', 'pipeSize', 'maxPipes', 'mappings']);
    if (data.engine !== undefined) result.engine = parseEngine(data.engine, `${file}.engine`);
    if (data.threads === 'auto') result.threads = 'auto';
    else if (typeof data.threads === 'string')
      throw new UsageError(`${file}.threads must be "auto" or an integer, got ${quote(data.threads)}`);
    else if (data.threads !== undefined)
      result.threads = checkInteger(data.threads, `${file}.threads`, 1, MAX_THREADS);
    if (data.pipeSize !== undefined) {
      result.pipeSize = checkInteger(data.pipeSize, `${file}.pipeSize`, 4096, 1 << 20);
    }
    if (data.maxPipes !== undefined)
      result.maxPipes = checkInteger(data.maxPipes, `${file}.maxPipes`, 0, INT_MAX);
    if (data.mappings === undefined) throw new UsageError(`${file}: "mappings" is missing`);
    list = data.mappings;
    prefix = `${file}: mappings`;
  } else {
    throw new UsageError(`${file}: expected an object with "mappings" or an array of mappings`);
  }
  if (!Array.isArray(list)) throw new UsageError(`${prefix} must be an array`);
  list.forEach((item, i) => {
    const where = `${prefix}[${i}]`;
    if (typeof item === 'string') {
      for (const options of parsePortSpec(item))
        result.mappings.push({ options, source: `${where} ${item}` });
    } else {
      result.mappings.push({ options: parseConfigMapping(item, where), source: where });
    }
  });
  return result;
}

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

type FlagName =
  | 'publish'
  | 'config'
  | 'engine'
  | 'threads'
  | 'json'
  | 'interval'
  | 'metrics'
  | 'drain-timeout'
  | 'max-connections'
  | 'idle-timeout'
  | 'help'
  | 'version'
  | 'proto'
  | 'host-ip'
  | 'host-port'
  | 'container-ip'
  | 'container-port'
  | 'use-listen-fd';

const BOOLEAN_FLAGS: ReadonlySet<FlagName> = new Set(['json', 'help', 'version', 'use-listen-fd']);

const FLAGS: Readonly<Record<string, FlagName>> = {
  p: 'publish',
  publish: 'publish',
  c: 'config',
  config: 'config',
  engine: 'engine',
  threads: 'threads',
  json: 'json',
  interval: 'interval',
  metrics: 'metrics',
  'drain-timeout': 'drain-timeout',
  'max-connections': 'max-connections',
  'idle-timeout': 'idle-timeout',
  h: 'help',
  help: 'help',
  v: 'version',
  version: 'version',
  proto: 'proto',
  'host-ip': 'host-ip',
  'host-port': 'host-port',
  'container-ip': 'container-ip',
  'container-port': 'container-port',
  'use-listen-fd': 'use-listen-fd',
};

function parseEngine(value: unknown, what: string): EngineName {
  if (value === 'splice' || value === 'stream') return value;
  throw new UsageError(`${what} must be splice or stream, got ${quote(value)}`);
}

function parseSeconds(text: string, what: string, min: number): number {
  const n = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || n < min || n > MAX_SECONDS) {
    throw new UsageError(
      `${what} must be a number of seconds from ${min} to ${MAX_SECONDS}, got ${quote(text)}`,
    );
  }
  return n;
}

function parseBool(text: string, what: string): boolean {
  if (/^(1|t|true)$/i.test(text)) return true;
  if (/^(0|f|false)$/i.test(text)) return false;
  throw new UsageError(`${what} takes no value (or true/false), got ${quote(text)}`);
}

/** `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (host 0.0.0.0). */
export function parseListenAddress(text: string, what: string): { host: string; port: number } {
  const m = /^(?:(?:\[([^\]]*)\]|([^:[\]]*)):)?([^:]*)$/.exec(text);
  if (!m) throw new UsageError(`${what} must be HOST:PORT, [IPv6]:PORT or :PORT, got ${quote(text)}`);
  let host = '0.0.0.0';
  if (m[1] !== undefined) {
    if (isIP(m[1]) !== 6) throw new UsageError(`${what}: ${quote(m[1])} in brackets is not an IPv6 address`);
    host = m[1];
  } else if (m[2] !== undefined && m[2] !== '') {
    host = checkHost(m[2], what);
  }
  return { host, port: parsePort(m[3]!, `${what} port`, 0) };
}

/**
 * Parses the command line (without `node` and the script). Flags may be written `-name`,
 * `--name`, with the value as the next argument or after `=`, as Go's flag package accepts;
 * `-p` also takes its value attached (`-p8080:10.0.0.2:80`).
 */
export function parseArgs(argv: readonly string[], readFile?: ReadFile): CliOptions {
  const options: CliOptions = {
    mappings: [],
    json: false,
    drainTimeout: DEFAULT_DRAIN_TIMEOUT,
    help: false,
    version: false,
    useListenFd: false,
    configFiles: [],
  };
  const docker: Partial<
    Record<'proto' | 'host-ip' | 'host-port' | 'container-ip' | 'container-port', string>
  > = {};
  const cliMappings: MappingSpec[] = [];
  const configs: string[] = [];
  const limits: { maxConnections?: number; idleTimeoutMs?: number } = {};

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      if (i + 1 < argv.length) throw new UsageError(`unexpected argument: ${quote(argv[i + 1])}`);
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      throw new UsageError(`unexpected argument: ${quote(arg)} (mappings are given with -p)`);
    }
    let name: string;
    let value: string | undefined;
    const attached = /^-p([\d[].*)$/.exec(arg);
    if (attached) {
      name = 'p';
      value = attached[1];
    } else {
      const body = arg.startsWith('--') ? arg.slice(2) : arg.slice(1);
      const eq = body.indexOf('=');
      name = eq < 0 ? body : body.slice(0, eq);
      value = eq < 0 ? undefined : body.slice(eq + 1);
    }
    const flag = Object.hasOwn(FLAGS, name) ? FLAGS[name] : undefined;
    if (flag === undefined) throw new UsageError(`unknown flag: ${arg.split('=')[0]}`);
    const shown = arg.startsWith('--') ? `--${name}` : `-${name}`;
    if (BOOLEAN_FLAGS.has(flag)) {
      const on = value === undefined ? true : parseBool(value, shown);
      if (flag === 'json') options.json = on;
      else if (flag === 'help') options.help = on;
      else if (flag === 'version') options.version = on;
      else options.useListenFd = on;
      continue;
    }
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('-') && next.length > 1)) {
        throw new UsageError(`flag ${shown} needs a value`);
      }
      value = next;
      i++;
    }
    switch (flag) {
      case 'publish':
        for (const mapping of parsePortSpec(value))
          cliMappings.push({ options: mapping, source: `-p ${value}` });
        break;
      case 'config':
        if (value === '') throw new UsageError(`flag ${shown} needs a file name`);
        configs.push(value);
        break;
      case 'engine':
        options.engine = parseEngine(value, shown);
        break;
      case 'threads':
        if (value === 'auto') {
          options.threads = 'auto';
          break;
        }
        if (!/^\d{1,3}$/.test(value) || Number(value) < 1 || Number(value) > MAX_THREADS) {
          throw new UsageError(
            `${shown} must be auto or a number from 1 to ${MAX_THREADS}, got ${quote(value)}`,
          );
        }
        options.threads = Number(value);
        break;
      case 'interval':
        options.interval = parseSeconds(value, shown, MIN_INTERVAL);
        break;
      case 'drain-timeout':
        options.drainTimeout = parseSeconds(value, shown, 0);
        break;
      case 'metrics':
        options.metrics = parseListenAddress(value, shown);
        break;
      case 'max-connections':
      case 'idle-timeout':
        if (!/^\d{1,10}$/.test(value) || Number(value) < 1 || Number(value) > INT_MAX) {
          throw new UsageError(`${shown} must be an integer from 1 to ${INT_MAX}, got ${quote(value)}`);
        }
        limits[flag === 'max-connections' ? 'maxConnections' : 'idleTimeoutMs'] = Number(value);
        break;
      default:
        docker[flag as keyof typeof docker] = value; // Go's flag package: the last one wins
    }
  }

  if (options.help || options.version) return options;

  // The config files first; flags given on the command line win over their settings.
  options.configFiles = configs;
  for (const file of configs) {
    if (!readFile) throw new UsageError('--config is not available here');
    let text: string;
    try {
      text = readFile(file);
    } catch (err) {
      throw new UsageError(`cannot read config file ${quote(file)}: ${(err as Error).message}`);
    }
    const config = parseConfig(text, file);
    options.mappings.push(...config.mappings);
    if (config.engine !== undefined && options.engine === undefined) options.engine = config.engine;
    if (config.threads !== undefined && options.threads === undefined) options.threads = config.threads;
    if (config.pipeSize !== undefined) options.pipeSize = config.pipeSize;
    if (config.maxPipes !== undefined) options.maxPipes = config.maxPipes;
  }
  if (Object.keys(docker).length > 0) cliMappings.push(dockerProxyMapping(docker));
  // --max-connections and --idle-timeout: TCP's limits, for the mappings of the command line.
  for (const spec of cliMappings) {
    if (spec.options.proto === 'tcp') Object.assign(spec.options, limits);
  }
  options.mappings.push(...cliMappings);

  if (options.useListenFd) {
    throw new UsageError(
      '-use-listen-fd is not supported by the Node CLI: it cannot adopt the already-bound socket on ' +
        'fd 4; use the native portsplice binary for that',
    );
  }
  if (options.mappings.length === 0) {
    throw new UsageError(
      'no mappings: give -p [HOST_IP:]HOST_PORT:TARGET_IP:TARGET_PORT, --config FILE, or ' +
        '-host-port/-container-ip/-container-port',
    );
  }
  checkDuplicates(options.mappings);
  return options;
}

function dockerProxyMapping(
  flags: Partial<Record<'proto' | 'host-ip' | 'host-port' | 'container-ip' | 'container-port', string>>,
): MappingSpec {
  for (const required of ['host-port', 'container-ip', 'container-port'] as const) {
    if (flags[required] === undefined)
      throw new UsageError(`-${required} is required with docker-proxy's flags`);
  }
  let proto: Proto = 'tcp';
  if (flags.proto !== undefined) {
    // Go's net package names: tcp4/tcp6/udp4/udp6 only narrow the address family, which the
    // addresses already fix.
    const p = flags.proto.toLowerCase().replace(/[46]$/, '');
    proto = parseProto(p, '-proto');
  }
  const hostIp = flags['host-ip'] === undefined ? '0.0.0.0' : checkIp(flags['host-ip'], '-host-ip');
  const options: MappingOptions = {
    proto,
    listen: { host: hostIp, port: parsePort(flags['host-port']!, '-host-port', 0) },
    target: {
      host: checkIp(flags['container-ip']!, '-container-ip'),
      port: parsePort(flags['container-port']!, '-container-port', 1),
    },
  };
  return { options, source: 'docker-proxy flags' };
}

/** Two mappings on the same protocol, address and port cannot both listen: say so before starting. */
function checkDuplicates(mappings: readonly MappingSpec[]): void {
  const seen = new Map<string, MappingSpec>();
  for (const spec of mappings) {
    const { proto, listen } = spec.options;
    if (listen.port === 0) continue;
    const key = `${proto} ${formatEndpoint(listen.host ?? '0.0.0.0', listen.port)}`;
    const other = seen.get(key);
    if (other) {
      throw new UsageError(
        `${key} is mapped twice (${other.source}${other.source === spec.source ? '' : ` and ${spec.source}`})`,
      );
    }
    seen.set(key, spec);
  }
}
