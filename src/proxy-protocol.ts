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
