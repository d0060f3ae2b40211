/** Addresses as the command writes and reads them. */
import { isIP } from 'node:net';
import { checkHost } from '../config.js';
import { UsageError, located, quote } from './where.js';

/** `host:port` with brackets around IPv6 addresses (`port` may be a range, `8000-8010`). */
export function formatEndpoint(host: string, port: number | string): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** A decimal port number from `min` to 65535 (leading zeros allowed, as Docker's ParseUint does). */
export function parsePort(text: string, what: string, min: number): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < min || Number(text) > 65535) {
    throw new UsageError(`${what} must be a number from ${min} to 65535, got ${quote(text)}`);
  }
  return Number(text);
}

/** `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (host 0.0.0.0), e.g. for --metrics. */
export function parseListenAddress(text: string, what: string): { host: string; port: number } {
  const m = /^(?:(?:\[([^\]]*)\]|([^:[\]]*)):)?([^:]*)$/.exec(text);
  if (!m) throw new UsageError(`${what} must be HOST:PORT, [IPv6]:PORT or :PORT, got ${quote(text)}`);
  let host = '0.0.0.0';
  if (m[1] !== undefined) {
    if (isIP(m[1]) !== 6) throw new UsageError(`${what}: ${quote(m[1])} in brackets is not an IPv6 address`);
    host = m[1];
  } else if (m[2] !== undefined && m[2] !== '') {
    host = located(`${what}: `, () => checkHost(m[2], 'host'));
  }
  return { host, port: parsePort(m[3]!, `${what} port`, 0) };
}
