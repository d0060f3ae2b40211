/**
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) of the stream
 * engine; the splice engine builds the same bytes in native/core/ps_proxy_protocol.cc.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { ProxyProtocolVersion } from './types.js';

/** One end of a connection as Node reports it (`remoteAddress`/`localAddress` and port). */
export interface ConnectionEnd {
  address: string;
  port: number;
}

/** v2's 12-byte signature (spec 2.2); it contains a NUL byte. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_PROXY = 0x21; // Version 2, command PROXY.
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;
const V2_UNSPEC = 0x00;
const MAPPED = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/** The 16 bytes of an IPv6 address literal (with or without a dotted IPv4 tail). */
function ipv6Bytes(text: string): Buffer {
  const out = Buffer.alloc(16);
  let groups: number[] = [];
  const parse = (part: string): number[] => {
    const result: number[] = [];
    for (const piece of part === '' ? [] : part.split(':')) {
      if (isIPv4(piece)) {
        const [a, b, c, d] = piece.split('.').map(Number);
        result.push((a << 8) | b, (c << 8) | d);
      } else {
        result.push(parseInt(piece, 16));
      }
    }
    return result;
  };
  const at = text.indexOf('::');
  if (at < 0) {
    groups = parse(text);
  } else {
    const head = parse(text.slice(0, at));
    const tail = parse(text.slice(at + 2));
    groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  groups.forEach((group, i) => out.writeUInt16BE(group, 2 * i));
  return out;
}

/**
 * The header for a connection from `source` (the client) to `destination` (the address it
 * connected to). Two IPv4-mapped IPv6 addresses (an IPv4 client of a dual-stack listener)
 * are announced as IPv4; a pair that is neither both IPv4 nor both IPv6 as "PROXY UNKNOWN"
 * (v1) or PROXY with AF_UNSPEC and no address (v2), as the spec says for what it cannot carry.
 */
export function proxyHeader(
  version: ProxyProtocolVersion,
  source: ConnectionEnd,
  destination: ConnectionEnd,
): Buffer {
  // A link-local IPv6 address may carry its zone ("fe80::1%eth0"), which the header has no
  // place for (the native engine's inet_ntop never writes it).
  let src = source.address.replace(/%.*$/, '');
  let dst = destination.address.replace(/%.*$/, '');
  const srcMapped = MAPPED.exec(src);
  const dstMapped = MAPPED.exec(dst);
  if (srcMapped && dstMapped) {
    src = srcMapped[1];
    dst = dstMapped[1];
  }
  const family = isIPv4(src) && isIPv4(dst) ? 4 : isIPv6(src) && isIPv6(dst) ? 6 : 0;
  if (version === 'v1') {
    if (family === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
    return Buffer.from(`PROXY TCP${family} ${src} ${dst} ${source.port} ${destination.port}\r\n`, 'latin1');
  }
  const addressBytes = family === 4 ? 4 : family === 6 ? 16 : 0;
  const length = family === 0 ? 0 : 2 * addressBytes + 4;
  const header = Buffer.alloc(16 + length);
  V2_SIGNATURE.copy(header, 0);
  header[12] = V2_PROXY;
  header[13] = family === 4 ? V2_TCP4 : family === 6 ? V2_TCP6 : V2_UNSPEC;
  header.writeUInt16BE(length, 14);
  if (family !== 0) {
    const bytes = (address: string) =>
      family === 4 ? Buffer.from(address.split('.').map(Number)) : ipv6Bytes(address);
    bytes(src).copy(header, 16);
    bytes(dst).copy(header, 16 + addressBytes);
    header.writeUInt16BE(source.port, 16 + 2 * addressBytes);
    header.writeUInt16BE(destination.port, 18 + 2 * addressBytes);
  }
  return header;
}

/** The longest header accepted from a client (the spec's 536-byte segment, section 2). */
export const ACCEPTED_HEADER_MAX = 536;
/** How long a client has to send its whole header (the spec's "at least 3 seconds"). */
export const PROXY_HEADER_TIMEOUT_MS = 3000;
const V1_MAX = 107;

/** A complete header read from a client: its length, and its addresses unless it has none. */
export interface ReceivedHeader {
  length: number;
  source?: ConnectionEnd;
  destination?: ConnectionEnd;
}

/** A port as the spec writes it: 1 to 5 digits, no leading zero, at most 65535. */
function port(text: string): number | undefined {
  if (!/^(0|[1-9]\d{0,4})$/.test(text)) return undefined;
  const n = Number(text);
  return n <= 65535 ? n : undefined;
}

/** Dotted decimal with no leading zeroes (the spec's canonical IPv4 form). */
const CANONICAL_V4 = /^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/;

function parseV1(data: Buffer): ReceivedHeader | 0 | 'invalid' | 'oversized' {
  const prefix = Buffer.from('PROXY ');
  if (!data.subarray(0, prefix.length).equals(prefix.subarray(0, Math.min(data.length, prefix.length)))) {
    return 'invalid';
  }
  const limit = Math.min(data.length, V1_MAX);
  for (let i = 0; i < limit; i++) {
    if (data[i] === 0x0a) return 'invalid'; // A lone LF.
    if (data[i] !== 0x0d) continue;
    if (i + 1 >= data.length) return 0;
    if (data[i + 1] !== 0x0a || i + 2 > V1_MAX) return 'invalid';
    const line = data.toString('latin1', 0, i);
    const length = i + 2;
    if (line === 'PROXY UNKNOWN' || line.startsWith('PROXY UNKNOWN ')) return { length };
    const m = /^PROXY (TCP4|TCP6) ([^ ]+) ([^ ]+) ([^ ]+) ([^ ]+)$/.exec(line);
    if (!m) return 'invalid';
    const valid = m[1] === 'TCP4' ? (a: string) => isIPv4(a) && CANONICAL_V4.test(a) : isIPv6;
    const [sp, dp] = [port(m[4]), port(m[5])];
    if (!valid(m[2]) || !valid(m[3]) || m[2].includes('%') || m[3].includes('%')) return 'invalid';
    if (sp === undefined || dp === undefined) return 'invalid';
    return { length, source: { address: m[2], port: sp }, destination: { address: m[3], port: dp } };
  }
  return data.length >= V1_MAX ? 'oversized' : 0;
}

/** An IPv6 address from 16 bytes, in Node's (and inet_ntop's) compressed form. */
function ipv6Text(bytes: Buffer): string {
  // IPv4-mapped: written with the dotted tail, as Node reports such a peer.
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return `::ffff:${[...bytes.subarray(12)].join('.')}`;
  }
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // The longest run of two or more zero groups becomes "::" (RFC 5952).
  let best = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLength) {
      best = i;
      bestLength = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLength).join(':')}`;
}

function parseV2(data: Buffer): ReceivedHeader | 0 | 'invalid' | 'oversized' {
  const n = Math.min(data.length, V2_SIGNATURE.length);
  if (!data.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return 'invalid';
  if (data.length > 12 && (data[12] >> 4 !== 2 || (data[12] & 0x0f) > 1)) return 'invalid';
  if (data.length > 13 && ![0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32].includes(data[13])) return 'invalid';
  if (data.length < 16) return 0;
  const length = 16 + data.readUInt16BE(14);
  if (length > ACCEPTED_HEADER_MAX) return 'oversized';
  if (data.length < length) return 0;
  // PROXY over TCP: the addresses; LOCAL and every other family: the real endpoints.
  if ((data[12] & 0x0f) !== 1 || (data[13] !== V2_TCP4 && data[13] !== V2_TCP6)) return { length };
  const bytes = data[13] === V2_TCP4 ? 4 : 16;
  if (length - 16 < 2 * bytes + 4) return 'invalid';
  const text = (at: number) =>
    bytes === 4 ? [...data.subarray(at, at + 4)].join('.') : ipv6Text(data.subarray(at, at + 16));
  return {
    length,
    source: { address: text(16), port: data.readUInt16BE(16 + 2 * bytes) },
    destination: { address: text(16 + bytes), port: data.readUInt16BE(18 + 2 * bytes) },
  };
}

/**
 * Parses what a client sent first: a complete v1 or v2 header, 0 while it is a valid
 * beginning of one, 'invalid' when it is not one, 'oversized' past ACCEPTED_HEADER_MAX (v2)
 * or without CRLF within 107 bytes (v1). As parse_proxy_header in the native core.
 */
export function parseProxyHeader(data: Buffer): ReceivedHeader | 0 | 'invalid' | 'oversized' {
  if (data.length === 0) return 0;
  if (data[0] === V2_SIGNATURE[0]) return parseV2(data);
  if (data[0] === 0x50) return parseV1(data);
  return 'invalid';
}
