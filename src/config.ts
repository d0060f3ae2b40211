/**
 * Validation and normalisation of user options. Every check names the field it rejects,
 * and nothing here has side effects, so a rejected call leaves nothing half-started.
 * Every message begins with the field's path (`listen.port ...`, `keepAlive.idleMs ...`;
 * `mapping` or `options` for the object itself): the command puts where the value came
 * from in front of it (`file.json: mappings[2].listen.port ...`, see src/cli/where.ts).
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { EngineName, KeepAliveOptions, Proto, ProxyProtocolVersion } from './types.js';

export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
export const DEFAULT_BACKLOG = 4096;
export const MAX_THREADS = 64;
export const DEFAULT_UDP_TIMEOUT_MS = 90_000;
export const DEFAULT_UDP_MAX_FLOWS = 4096;
/** The most UDP flows a mapping may keep (each holds a socket). */
export const MAX_UDP_FLOWS = 2 ** 20;

/** docker-proxy's keep-alive (Go 1.23+): idle 15 s, then 9 probes 15 s apart. */
export const DEFAULT_KEEP_ALIVE: Readonly<Required<KeepAliveOptions>> = Object.freeze({
  idleMs: 15_000,
  intervalMs: 15_000,
  count: 9,
});
/** The kernel's limits: TCP_KEEPIDLE and TCP_KEEPINTVL up to 32767 s, TCP_KEEPCNT up to 127. */
export const MAX_KEEP_ALIVE_MS = 32_767_000;
export const MAX_KEEP_ALIVE_COUNT = 127;

const ENGINES: readonly EngineName[] = ['splice', 'stream'];
const PROTOS: readonly Proto[] = ['tcp', 'udp'];
const PROXY_PROTOCOLS: readonly ProxyProtocolVersion[] = ['v1', 'v2'];

/** Options after validation, with every default filled in and every host an address literal. */
export interface ResolvedMapping {
  proto: Proto;
  listen: { host: string; port: number };
  target: { host: string; port: number };
  connectTimeoutMs: number;
  backlog: number;
  ipv6Only: boolean;
  udpTimeoutMs: number;
  udpMaxFlows: number;
  /** TCP keep-alive on both sockets of each connection, or false (always false for UDP). */
  keepAlive: Required<KeepAliveOptions> | false;
  name?: string;
  /** The PROXY protocol header sent to the target, or undefined (off; always for UDP). */
  proxyProtocol: ProxyProtocolVersion | undefined;
  /** Whether every client must start with a PROXY header (always false for UDP). */
  acceptProxyProtocol: boolean;
  /** TCP connections open at once; 0: no limit (always 0 for UDP). */
  maxConnections: number;
  /** TCP: reset a connection after this long with no byte either way; 0: never (always 0 for UDP). */
  idleTimeoutMs: number;
}

export interface ResolvedProxyOptions {
  engine: EngineName;
  threads: number | 'auto';
  pipeSize: number;
  maxPipes: number;
}

type ErrorCode = 'ERR_INVALID_ARG_TYPE' | 'ERR_INVALID_ARG_VALUE' | 'ERR_OUT_OF_RANGE';

function fail(Kind: ErrorConstructor, code: ErrorCode, message: string): never {
  const error = new Kind(message) as Error & { code: ErrorCode };
  error.code = code;
  throw error;
}

/** A value as error messages show it (strings quoted, objects by kind). */
export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? 'an array' : 'an object';
}

function checkObject(value: unknown, field: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${field} must be an object, got ${describe(value)}`);
  }
  return value as Record<string, unknown>;
}

function checkKeys(value: Record<string, unknown>, field: string, allowed: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      fail(
        TypeError,
        'ERR_INVALID_ARG_VALUE',
        `${field}.${key} is not a known option (expected one of: ${allowed.join(', ')})`,
      );
    }
  }
}

function checkInteger(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${field} must be a number, got ${describe(value)}`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    fail(
      RangeError,
      'ERR_OUT_OF_RANGE',
      `${field} must be an integer from ${min} to ${max}, got ${describe(value)}`,
    );
  }
  return value;
}

/** `threads`: `'auto'` is handled by the caller; anything else must be an integer. */
export function checkThreads(value: unknown, field: string): number {
  if (typeof value === 'string') {
    fail(TypeError, 'ERR_INVALID_ARG_VALUE', `${field} must be 'auto' or a number, got ${describe(value)}`);
  }
  return checkInteger(value, field, 1, MAX_THREADS);
}

function checkChoice<T extends string>(value: unknown, field: string, choices: readonly T[]): T {
  if (typeof value !== 'string' || !choices.includes(value as T)) {
    fail(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      `${field} must be one of ${choices.map((c) => `'${c}'`).join(', ')}, got ${describe(value)}`,
    );
  }
  return value as T;
}

/** keep-alive times are set in whole seconds, the kernel's unit: anything else would be rounded. */
function checkSeconds(value: unknown, field: string): number {
  const ms = checkInteger(value, field, 1000, MAX_KEEP_ALIVE_MS);
  if (ms % 1000 !== 0) {
    fail(
      RangeError,
      'ERR_OUT_OF_RANGE',
      `${field} must be a whole number of seconds (a multiple of 1000), got ${describe(value)}`,
    );
  }
  return ms;
}

/**
 * Validates a mapping's `proxyProtocol` (also used by the command for its config files).
 * UDP is refused: v2 defines a header per datagram, but neither nginx nor HAProxy accepts it
 * on UDP, replies would carry none, and it would push a 65,507-byte datagram over the limit.
 */
export function checkProxyProtocol(value: unknown, proto: Proto): ProxyProtocolVersion | undefined {
  if (value === undefined) return undefined;
  const version = checkChoice(value, 'proxyProtocol', PROXY_PROTOCOLS);
  if (proto === 'udp') {
    fail(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      "proxyProtocol applies to TCP mappings only, not to proto 'udp' (the PROXY protocol over " +
        'datagrams has no receiver among nginx and HAProxy, and replies would carry no header)',
    );
  }
  return version;
}

/** Validates a mapping's `acceptProxyProtocol` (also used by the command for its config files). */
export function checkAcceptProxyProtocol(value: unknown, proto: Proto): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `acceptProxyProtocol must be a boolean, got ${describe(value)}`);
  }
  if (value && proto === 'udp') {
    fail(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      "acceptProxyProtocol applies to TCP mappings only, not to proto 'udp'",
    );
  }
  return value;
}

/** Validates a mapping's `keepAlive` (also used by the command for its config files). */
export function checkKeepAlive(value: unknown, proto: Proto): Required<KeepAliveOptions> | false {
  if (proto === 'udp') {
    if (value === undefined) return false;
    fail(TypeError, 'ERR_INVALID_ARG_VALUE', "keepAlive applies to TCP mappings only, not to proto 'udp'");
  }
  if (value === undefined) return { ...DEFAULT_KEEP_ALIVE };
  if (value === false) return false;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(
      TypeError,
      'ERR_INVALID_ARG_TYPE',
      `keepAlive must be false or an object { idleMs, intervalMs, count }, got ${describe(value)}`,
    );
  }
  const k = value as Record<string, unknown>;
  checkKeys(k, 'keepAlive', ['idleMs', 'intervalMs', 'count']);
  return {
    idleMs: k.idleMs === undefined ? DEFAULT_KEEP_ALIVE.idleMs : checkSeconds(k.idleMs, 'keepAlive.idleMs'),
    intervalMs:
      k.intervalMs === undefined
        ? DEFAULT_KEEP_ALIVE.intervalMs
        : checkSeconds(k.intervalMs, 'keepAlive.intervalMs'),
    count:
      k.count === undefined
        ? DEFAULT_KEEP_ALIVE.count
        : checkInteger(k.count, 'keepAlive.count', 1, MAX_KEEP_ALIVE_COUNT),
  };
}

const HOST_NAME =
  /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;

/** Checks a host: an IP literal, or a syntactically valid DNS name (resolved later). */
export function checkHost(value: unknown, field: string): string {
  if (typeof value !== 'string') {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${field} must be a string, got ${describe(value)}`);
  }
  if (isIP(value) !== 0) return value;
  // A name made only of digits and dots is a malformed IPv4 address, not a host name.
  if (/^[\d.]+$/.test(value) || !HOST_NAME.test(value)) {
    fail(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      `${field} must be an IPv4 or IPv6 address or a host name, got ${describe(value)}`,
    );
  }
  return value;
}

export function validateProxyOptions(options: unknown, defaultEngine: EngineName): ResolvedProxyOptions {
  const o = options === undefined ? {} : checkObject(options, 'options');
  checkKeys(o, 'options', ['engine', 'threads', 'pipeSize', 'maxPipes']);
  return {
    engine: o.engine === undefined ? defaultEngine : checkChoice(o.engine, 'engine', ENGINES),
    threads: o.threads === undefined || o.threads === 'auto' ? 'auto' : checkThreads(o.threads, 'threads'),
    pipeSize: o.pipeSize === undefined ? 0 : checkInteger(o.pipeSize, 'pipeSize', 4096, 1 << 20),
    maxPipes: o.maxPipes === undefined ? 0 : checkInteger(o.maxPipes, 'maxPipes', 0, 2 ** 31 - 1),
  };
}

/** Returns the drain timeout of `close()`'s options, in milliseconds. */
export function validateCloseOptions(options: unknown): number {
  if (options === undefined) return 0;
  const o = checkObject(options, 'options');
  checkKeys(o, 'options', ['drainTimeoutMs']);
  return o.drainTimeoutMs === undefined
    ? 0
    : checkInteger(o.drainTimeoutMs, 'drainTimeoutMs', 0, 2 ** 31 - 1);
}

/**
 * The options that mean something for one protocol only, and why: given on a mapping of the
 * other protocol they would be silently ignored, so they are refused instead.
 */
const PROTO_ONLY: Readonly<Record<string, { proto: Proto; why: string }>> = {
  connectTimeoutMs: { proto: 'tcp', why: 'UDP has no connection to wait for' },
  backlog: { proto: 'tcp', why: 'a UDP socket has no accept queue' },
  udpTimeoutMs: { proto: 'udp', why: 'TCP connections end with FIN or RST, not a timeout' },
  udpMaxFlows: { proto: 'udp', why: 'TCP has connections, not flows' },
  maxConnections: { proto: 'tcp', why: 'UDP flows are bounded by udpMaxFlows' },
  idleTimeoutMs: { proto: 'tcp', why: 'UDP flows expire after udpTimeoutMs' },
};

/** Refuses options of the other protocol (also used by the command for its config files). */
export function checkAppliesTo(o: Record<string, unknown>, proto: Proto): void {
  for (const [field, only] of Object.entries(PROTO_ONLY)) {
    if (o[field] !== undefined && only.proto !== proto) {
      fail(
        TypeError,
        'ERR_INVALID_ARG_VALUE',
        `${field} applies to ${only.proto.toUpperCase()} mappings only, not to proto '${proto}' (${only.why})`,
      );
    }
  }
}

/** The keys of a mapping's options (`MappingOptions`): any other is refused by name. */
export const MAPPING_KEYS = [
  'proto',
  'listen',
  'target',
  'connectTimeoutMs',
  'backlog',
  'ipv6Only',
  'udpTimeoutMs',
  'udpMaxFlows',
  'keepAlive',
  'name',
  'proxyProtocol',
  'acceptProxyProtocol',
  'maxConnections',
  'idleTimeoutMs',
] as const;

/** Synchronous checks of a mapping's options; host names are resolved by `resolveMapping`. */
export function validateMapping(options: unknown): ResolvedMapping {
  const o = checkObject(options, 'mapping');
  checkKeys(o, 'mapping', MAPPING_KEYS);
  const proto = checkChoice(o.proto, 'proto', PROTOS);
  if (o.listen === undefined) fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'listen is required');
  const listen = checkObject(o.listen, 'listen');
  checkKeys(listen, 'listen', ['host', 'port']);
  if (o.target === undefined) fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'target is required');
  const target = checkObject(o.target, 'target');
  checkKeys(target, 'target', ['host', 'port']);
  if (o.ipv6Only !== undefined && typeof o.ipv6Only !== 'boolean') {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `ipv6Only must be a boolean, got ${describe(o.ipv6Only)}`);
  }
  if (target.host === undefined) fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'target.host is required');
  const mapping: ResolvedMapping = {
    proto,
    listen: {
      host: listen.host === undefined ? '0.0.0.0' : checkHost(listen.host, 'listen.host'),
      port: checkInteger(listen.port, 'listen.port', 0, 65535),
    },
    target: {
      host: checkHost(target.host, 'target.host'),
      port: checkInteger(target.port, 'target.port', 1, 65535),
    },
    connectTimeoutMs:
      o.connectTimeoutMs === undefined
        ? DEFAULT_CONNECT_TIMEOUT_MS
        : checkInteger(o.connectTimeoutMs, 'connectTimeoutMs', 1, 2 ** 31 - 1),
    backlog: o.backlog === undefined ? DEFAULT_BACKLOG : checkInteger(o.backlog, 'backlog', 1, 65535),
    ipv6Only: o.ipv6Only === true,
    udpTimeoutMs:
      o.udpTimeoutMs === undefined
        ? DEFAULT_UDP_TIMEOUT_MS
        : checkInteger(o.udpTimeoutMs, 'udpTimeoutMs', 1, 2 ** 31 - 1),
    udpMaxFlows:
      o.udpMaxFlows === undefined
        ? DEFAULT_UDP_MAX_FLOWS
        : checkInteger(o.udpMaxFlows, 'udpMaxFlows', 1, MAX_UDP_FLOWS),
    keepAlive: checkKeepAlive(o.keepAlive, proto),
    ...(o.name !== undefined && { name: checkName(o.name, 'name') }),
    proxyProtocol: checkProxyProtocol(o.proxyProtocol, proto),
    acceptProxyProtocol: checkAcceptProxyProtocol(o.acceptProxyProtocol, proto),
    maxConnections:
      o.maxConnections === undefined ? 0 : checkInteger(o.maxConnections, 'maxConnections', 1, 2 ** 31 - 1),
    idleTimeoutMs:
      o.idleTimeoutMs === undefined ? 0 : checkInteger(o.idleTimeoutMs, 'idleTimeoutMs', 1, 2 ** 31 - 1),
  };
  // After the values, so that a bad value is named first whatever the protocol.
  checkAppliesTo(o, proto);
  return mapping;
}

/** Letters, digits and `_ . : / -`: safe as a Prometheus label value and in a log line. */
const NAME_PATTERN = /^[A-Za-z0-9_.:/-]{1,64}$/;

/** Validates a mapping's `name` (also used by the command for its config files). */
export function checkName(value: unknown, field: string): string {
  if (typeof value !== 'string') {
    fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${field} must be a string, got ${describe(value)}`);
  }
  if (!NAME_PATTERN.test(value)) {
    fail(
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      `${field} must be 1 to 64 letters, digits or _ . : / -, got ${describe(value)}`,
    );
  }
  return value;
}

async function resolveHost(host: string, field: string): Promise<string> {
  if (isIP(host) !== 0) return host;
  try {
    return (await lookup(host)).address;
  } catch (cause) {
    const error = new Error(`${field}: cannot resolve ${describe(host)}: ${(cause as Error).message}`, {
      cause,
    }) as Error & { code?: string };
    error.code = (cause as { code?: string }).code;
    throw error;
  }
}

/** Validates a mapping and resolves its host names once, to address literals. */
export async function resolveMapping(options: unknown): Promise<ResolvedMapping> {
  const mapping = validateMapping(options);
  mapping.listen.host = await resolveHost(mapping.listen.host, 'listen.host');
  mapping.target.host = await resolveHost(mapping.target.host, 'target.host');
  return mapping;
}
