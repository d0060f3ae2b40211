/**
 * `-p`/`--publish`: `docker run -p`'s syntax with the target's address added,
 * `[HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT[/tcp|/udp]`, read by Docker's rules
 * (moby/go-connections nat.ParsePortSpec): no host IP listens on IPv4 and IPv6, an empty host
 * port or 0 picks a free one, equal ranges map port to port, a host range with one target
 * port takes the first free port of the range, the protocol is case-insensitive and `80/`
 * is tcp. Where Docker silently ignores text (`1-2-3`, `80/tcp/udp`) this rejects it.
 */
import { validateMapping } from '../config.js';
import type { MappingOptions, Proto } from '../types.js';
import { parsePort } from './endpoint.js';
import type { MappingSpec } from './spec.js';
import { UsageError, located, quote } from './where.js';

/** Longest port range one `-p` may span. */
export const MAX_RANGE = 10_000;

interface PortRange {
  first: number;
  count: number;
}

/** `PORT` or `FIRST-LAST`. Port 0 (pick one) is allowed only as a single host port. */
function parsePortRange(text: string, what: string, allowZero: boolean): PortRange {
  const dash = text.indexOf('-');
  if (dash < 0) return { first: parsePort(text, what, allowZero ? 0 : 1), count: 1 };
  const first = parsePort(text.slice(0, dash), `${what} range start`, 1);
  const last = parsePort(text.slice(dash + 1), `${what} range end`, 1);
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
  if (p === '' || p === 'tcp') return 'tcp'; // Docker: "80/" is 80/tcp
  if (p === 'udp') return 'udp';
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

/** A host field: `[IPv6]` loses its brackets; the library checks the address or name. */
function hostField(field: string, what: string): string {
  if (!field.startsWith('[')) return field;
  const inner = field.slice(1, -1);
  if (!inner.includes(':'))
    throw new UsageError(`${what}: ${quote(inner)} in brackets is not an IPv6 address`);
  return inner;
}

/** Parses one `-p` value into the mappings it publishes (one per target port). */
export function parsePortSpec(
  spec: string,
  { what = `-p ${quote(spec)}`, source = `-p ${spec}` }: { what?: string; source?: string } = {},
): MappingSpec[] {
  if (spec === '') {
    throw new UsageError('-p needs a value: [HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT[/udp]');
  }
  if (/\s/.test(spec)) throw new UsageError(`${what}: must not contain whitespace`);
  const slash = spec.indexOf('/');
  const body = slash < 0 ? spec : spec.slice(0, slash);
  const proto = slash < 0 ? 'tcp' : parseProto(spec.slice(slash + 1), what);
  if (body.endsWith(':')) throw new UsageError(`${what}: ends with ':' where the target port should be`);
  const fields = splitFields(body, what);
  if (fields.length > 4) {
    throw new UsageError(
      `${what}: too many ':' (IPv6 addresses must be in brackets, e.g. [::1]:8080:[::1]:80)`,
    );
  }
  // Three fields whose first is an address, not a port: HOST_IP:HOST_PORT:TARGET_PORT, Docker's
  // own form, which has no target address.
  const port = /^[\d-]*$/;
  if (fields.length < 3 || (fields.length === 3 && !port.test(fields[0]!) && port.test(fields[1]!))) {
    throw new UsageError(
      `${what}: expected [HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT` +
        (fields.length > 1 ? ' (the target address is missing)' : ''),
    );
  }
  const [hostIp, hostPort, targetIp, targetPort] = fields.length === 4 ? fields : ['', ...fields];
  if (targetIp === '') throw new UsageError(`${what}: target IP is empty`);
  const targetHost = hostField(targetIp!, `${what}: target IP`);
  const targets = parsePortRange(targetPort!, `${what}: target port`, false);
  // An empty host port is Docker's "any free port" for each target port; 0 is that for one.
  const any = hostPort === '';
  const hosts = any
    ? { first: 0, count: targets.count }
    : parsePortRange(hostPort!, `${what}: host port`, true);
  // A host range with one target port: Docker takes the first free port of the range.
  const pick = targets.count === 1 && hosts.count > 1;
  if (!pick && hosts.count !== targets.count) {
    throw new UsageError(
      `${what}: the host side has ${hosts.count} port${hosts.count === 1 ? '' : 's'} ` +
        `and the target side ${targets.count}; port ranges must be the same length ` +
        `(or the host side a range and the target one port: the first free port of the range)`,
    );
  }
  const dualStack = hostIp === '';
  const listenHost = dualStack ? '0.0.0.0' : hostField(hostIp!, `${what}: host IP`);
  const specs: MappingSpec[] = [];
  for (let i = 0; i < targets.count; i++) {
    const options: MappingOptions = {
      proto,
      listen: { host: listenHost, port: hosts.first === 0 ? 0 : hosts.first + i },
      target: { host: targetHost, port: targets.first + i },
    };
    if (i === 0) located(`${what}: `, () => validateMapping(options)); // the hosts; ports are checked above
    specs.push({
      options,
      source,
      ...(pick && { lastHostPort: hosts.first + hosts.count - 1 }),
      ...(dualStack && { dualStack }),
    });
  }
  return specs;
}
