/**
 * Public types of portsplice. Everything a user of the library sees is declared here,
 * so that this file reads as the API reference.
 */

/** Which data path moves the bytes. */
export type EngineName = 'splice' | 'stream';

/** Transport protocol of a mapping. */
export type Proto = 'tcp' | 'udp';

export interface ProxyOptions {
  /**
   * `'splice'` (the default on Linux): native epoll threads move the bytes with splice(2).
   * `'stream'`: a pure Node implementation (net sockets piped both ways), the fallback on
   * platforms without splice and the baseline the benchmarks compare against.
   */
  engine?: EngineName;
  /**
   * Native event-loop threads for the splice engine: 1 to 64, exactly that many, or
   * `'auto'` (the default): one thread while idle, and more while the threads are busy
   * (outside epoll_wait three quarters of the time for 200 ms), up to the CPUs the
   * process may run on (its affinity and its cgroup's CPU quota). Busy connections are
   * then handed over to the new thread. Threads added are kept; an idle one costs no CPU.
   */
  threads?: number | 'auto';
  /**
   * Splice engine: capacity asked for each pipe with F_SETPIPE_SZ, in bytes (4096 to
   * 1048576). Larger pipes move more per system call. The default is 1 MiB for root, which
   * `fs.pipe-user-pages-soft` does not limit, and otherwise the kernel's 64 KiB, so that
   * the proxy does not use up the per-user pipe budget of the user's other programs.
   */
  pipeSize?: number;
  /**
   * Splice engine: pipes in use at once per thread before further transfers are copied
   * through a user-space buffer instead (default 0: no limit but the kernel's).
   */
  maxPipes?: number;
}

export interface Endpoint {
  /** An IPv4 or IPv6 address literal, or a name resolved once when the mapping is added. */
  host: string;
  /** A TCP or UDP port, 0 to 65535 (0 on a listen address picks a free port). */
  port: number;
}

export interface MappingOptions {
  proto: Proto;
  /** Where the proxy listens. `host` defaults to `0.0.0.0`, like docker-proxy's `-host-ip`. */
  listen: { host?: string; port: number };
  /** Where accepted connections are forwarded to. Port 0 is not allowed here. */
  target: Endpoint;
  /** Give up connecting to the target after this many milliseconds (default 30000). */
  connectTimeoutMs?: number;
  /** Listen backlog (default 4096, clamped by the kernel to net.core.somaxconn). */
  backlog?: number;
  /** For an IPv6 listen address: refuse IPv4-mapped connections (default false, as in `net`). */
  ipv6Only?: boolean;
  /**
   * UDP: a flow (one client address and port) expires after this many milliseconds with no
   * datagram in either direction (default 90000, docker-proxy's value). A client that only
   * sends keeps its flow, and the target keeps seeing one source port, as with Docker
   * 28.0.2 and later.
   */
  udpTimeoutMs?: number;
  /** UDP: flows kept at once per mapping; beyond it the least recently active one is evicted (default 4096). */
  udpMaxFlows?: number;
  /**
   * TCP: keep-alive on both sockets of every connection (the client's and the target's), so
   * that a peer that vanished (laptop closed, NAT mapping dropped) does not hold the other
   * side open forever. The default is docker-proxy's: `{ idleMs: 15000, intervalMs: 15000,
   * count: 9 }`; missing fields take these values; `false` turns keep-alive off. Rejected on
   * a UDP mapping. The stream engine can set only `idleMs` (Node's `socket.setKeepAlive()`):
   * the interval and count there are libuv's (1 s and 10 probes).
   */
  keepAlive?: KeepAliveOptions | false;
  /**
   * A stable name for the mapping, shown in `stats()` and used by the command as the
   * Prometheus `mapping` label (instead of `proto/listen`): 1 to 64 characters, letters,
   * digits and `_ . : / -`.
   */
  name?: string;
  /**
   * TCP: send a PROXY protocol header (HAProxy's spec) to the target before any client byte,
   * so that a target that accepts it (nginx `proxy_protocol`, HAProxy `accept-proxy`,
   * Envoy, Traefik, PostgreSQL poolers...) sees the client's address and port and the
   * address and port the client connected to, instead of the proxy's. `'v1'` is the text
   * line (`PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n`), `'v2'` the binary header
   * (no TLVs). An IPv4 client of a dual-stack `[::]` listener is announced as IPv4. Off by
   * default: only enable it toward a target configured to expect the header, which it
   * would otherwise read as the start of the client's data. Rejected on UDP mappings.
   */
  proxyProtocol?: ProxyProtocolVersion;
  /**
   * TCP: every client must start its connection with a PROXY protocol header (v1 or v2,
   * told apart by their signatures), as behind a load balancer that sends one (HAProxy
   * `send-proxy`, AWS NLB, nginx `proxy_protocol on`). The header is read and checked
   * before the target is connected; its addresses then are the client's, for the header
   * that `proxyProtocol` sends onwards. A header that is malformed, longer than 536 bytes,
   * or not complete within 3 s gets the client reset and is counted in
   * `proxyHeaders.rejected`. Default false. Only enable it on a listener that
   * nothing but the load balancer can reach: the header's addresses are taken on trust.
   */
  acceptProxyProtocol?: boolean;
  /**
   * TCP: connections open at once (default: no limit). At the limit the proxy stops
   * accepting: new connections complete their handshake in the kernel and wait in the
   * listen backlog (up to `backlog`; beyond it the kernel drops their SYNs and clients
   * retry), and are accepted, in order, as open ones end. Nothing is accepted and then
   * closed, unlike Node's `net.Server.maxConnections`. `connections.limitReached` counts how
   * often the mapping filled up. Rejected on UDP, whose flows are bounded by `udpMaxFlows`.
   * The stream engine cannot leave connections in the backlog (libuv accepts whatever is
   * ready): it holds at most `backlog` extra connections itself, accepted but not forwarded
   * (the target is not connected and no byte moves), and resets any beyond.
   */
  maxConnections?: number;
  /**
   * TCP: an open connection with no byte moved in either direction for this many
   * milliseconds is reset, both sides with RST (default: never, as docker-proxy). A half-open
   * connection (one side sent FIN, the other idles) follows the same rule. Checked by the
   * engine's timer list (no timer per connection): a connection closes between
   * `idleTimeoutMs` and `idleTimeoutMs` plus the loop's timer slack. Rejected on UDP (use
   * `udpTimeoutMs`).
   */
  idleTimeoutMs?: number;
}

/** The PROXY protocol versions: 1 (text) and 2 (binary). */
export type ProxyProtocolVersion = 'v1' | 'v2';

/**
 * TCP keep-alive: after `idleMs` without a segment from the peer the kernel sends a probe
 * every `intervalMs`, and after `count` unanswered probes it gives the peer up; the proxy
 * then resets the connection's other side. The kernel counts in whole seconds, so the
 * times must be multiples of 1000.
 */
export interface KeepAliveOptions {
  /** Idle time before the first probe, 1000 to 32767000 ms (default 15000). */
  idleMs?: number;
  /** Time between probes, 1000 to 32767000 ms (default 15000). Not settable in the stream engine. */
  intervalMs?: number;
  /** Unanswered probes before the peer is given up, 1 to 127 (default 9). Not settable in the stream engine. */
  count?: number;
}

export interface CloseOptions {
  /**
   * Stop accepting at once, but let open connections finish for up to this many
   * milliseconds before the rest are reset (default 0: reset at once).
   */
  drainTimeoutMs?: number;
}

/**
 * What a drain left behind: the TCP connections still open when its timeout ran out, which
 * were then reset (0 when every connection finished in time, or without a timeout: how many
 * were reset at once).
 */
export interface DrainResult {
  reset: number;
}

/** A mapping that is listening. Pass it (or its id) to `proxy.remove()`. */
export interface Mapping {
  readonly id: number;
  readonly proto: Proto;
  /** The address actually bound: `port` is the real port when 0 was asked for. */
  readonly listen: Readonly<Endpoint>;
  /** The target as resolved when the mapping was added. */
  readonly target: Readonly<Endpoint>;
  /** The `name` option, when one was given. */
  readonly name?: string;
}

export interface ConnectionCounters {
  /** Client connections accepted since the mapping was added. */
  accepted: number;
  /** Connections open now (accepted and not yet closed). */
  active: number;
  /** Connections whose target could not be reached: the sum of `failedBy`. */
  failed: number;
  /** The same connections by reason. */
  failedBy: FailureCounters;
  /**
   * Times the mapping filled up to `maxConnections` (the connection that took the last slot;
   * 0 without a limit). While `active === maxConnections` new connections wait.
   */
  limitReached: number;
  /** Connections reset after `idleTimeoutMs` with no byte either way. */
  idleClosed: number;
}

/** Why a connection to the target failed. */
export type FailureReason = 'refused' | 'timeout' | 'unreachable' | 'other';

/** Failed connections to the target, by reason. */
export interface FailureCounters {
  /** The target's port is closed: it answered the SYN with a reset (ECONNREFUSED). */
  refused: number;
  /** No answer within `connectTimeoutMs`, or the kernel gave up on its SYN retries (ETIMEDOUT). */
  timeout: number;
  /** No route to the target, or an ICMP host/network unreachable (EHOSTUNREACH, ENETUNREACH). */
  unreachable: number;
  /** Anything else (out of file descriptors, EADDRNOTAVAIL, ...). */
  other: number;
}

/** PROXY protocol headers of a TCP mapping (all 0 unless it has the options). */
export interface ProxyHeaderCounters {
  /** Headers sent whole to the target (`proxyProtocol`). */
  sent: number;
  /** Headers read from clients (`acceptProxyProtocol`). */
  received: number;
  /** Clients reset for a bad, oversized or late header (`acceptProxyProtocol`). */
  rejected: number;
}

/**
 * Byte counters. They are bigints because a long-lived mapping can move more than
 * 2^53 bytes. `spliced + copied === toTarget + toClient` at every snapshot boundary where no
 * transfer is in flight.
 */
export interface ByteCounters {
  /** Bytes written to the target. */
  toTarget: bigint;
  /** Bytes written to the client. */
  toClient: bigint;
  /** Of those, bytes moved by splice(2) through a pipe (payload never entered user space). */
  spliced: bigint;
  /** Of those, bytes copied through a user-space buffer (stream engine, or splice fallback). */
  copied: bigint;
}

export interface TcpMappingStats {
  id: number;
  /** The mapping's `name` option, when one was given. */
  name?: string;
  proto: 'tcp';
  listen: Endpoint;
  target: Endpoint;
  connections: ConnectionCounters;
  proxyHeaders: ProxyHeaderCounters;
  bytes: ByteCounters;
  /** Failure events of this mapping dropped because the queue was full (see `EventBatch`). */
  events: { dropped: number };
  /** Splice engine: its pipes (always 0 for the stream engine, which has none). */
  pipes: PipeCounters;
}

export interface PipeCounters {
  /** Pipes held now by the mapping's connections (at most two per connection, while bytes move). */
  inUse: number;
  /**
   * Bursts copied through a user-space buffer because no pipe could be had (`maxPipes`
   * reached, or the descriptor limit); `bytes.copied` counts their bytes.
   */
  fallbacks: number;
}

export interface FlowCounters {
  /** Flows open now. */
  active: number;
  /** Flows created since the mapping was added. */
  created: number;
  /** Flows closed after `udpTimeoutMs` with no datagram either way. */
  expired: number;
  /** Flows closed to make room under `udpMaxFlows`. */
  evicted: number;
}

export interface DatagramCounters {
  /** Datagrams sent to the target. */
  toTarget: number;
  /** Datagrams sent back to clients. */
  toClient: number;
}

/** Datagrams that were not forwarded, by reason. */
export interface DropCounters {
  total: number;
  /** No flow socket could be opened (file descriptors exhausted). */
  noFlow: number;
  /** The kernel's send queue was full (EAGAIN, ENOBUFS). */
  queueFull: number;
  /** The target's port is closed (ICMP port unreachable, ECONNREFUSED). */
  refused: number;
  /** Larger than the receive buffer (cannot happen below 65,535 bytes). */
  truncated: number;
  /** Any other send error. */
  other: number;
}

export interface UdpMappingStats {
  id: number;
  /** The mapping's `name` option, when one was given. */
  name?: string;
  proto: 'udp';
  listen: Endpoint;
  target: Endpoint;
  flows: FlowCounters;
  datagrams: DatagramCounters;
  dropped: DropCounters;
  /** Payload bytes; `spliced` is always 0n for UDP. */
  bytes: ByteCounters;
}

export type MappingStats = TcpMappingStats | UdpMappingStats;

export interface ProxyStats {
  engine: EngineName;
  /** Native engine threads running now (the splice engine; 0 for the stream engine). */
  threads: number;
  mappings: MappingStats[];
  /** The same object with the bigints as decimal strings, for `JSON.stringify()`. */
  toJSON(): unknown;
}

/**
 * A connection the proxy accepted and could not forward: the connect to the target failed.
 * Reported for TCP mappings (a UDP target's refusals are counted in `dropped.refused`).
 */
export interface TargetFailureEvent {
  type: 'targetFailure';
  /** The mapping's id (see `proxy.mappings()`). */
  mapping: number;
  reason: FailureReason;
  /** The errno name: `'ECONNREFUSED'`, `'ETIMEDOUT'`, `'EHOSTUNREACH'`, `'EMFILE'`... */
  code: string;
  /** The errno, negative as in Node. */
  errno: number;
  /** The client's address; absent when the client had already gone. */
  client?: Endpoint;
  listen: Endpoint;
  target: Endpoint;
  /** When it happened, in milliseconds since the epoch. */
  time: number;
}

/** `accept()` failed on a mapping's listener (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): it pauses for 100 ms. */
export interface ListenerErrorEvent {
  type: 'listenerError';
  mapping: number;
  code: string;
  errno: number;
  listen: Endpoint;
  time: number;
}

export type ProxyEvent = TargetFailureEvent | ListenerErrorEvent;

/**
 * What the `'events'` listeners receive: the events since the last batch, at most one batch
 * every 50 ms. The engine keeps at most 1024 events between two batches; beyond that they are
 * dropped (the newest ones), counted here and in each mapping's `events.dropped`.
 */
export interface EventBatch {
  events: ProxyEvent[];
  /** Events dropped since the last batch because the queue was full. */
  dropped: number;
}

export interface PortspliceProxy {
  /** The engine this proxy runs on. */
  readonly engine: EngineName;
  /** True once `close()` has been called. */
  readonly closed: boolean;
  /**
   * Start listening. Rejects with a `TypeError`/`RangeError` naming the field for bad options,
   * and with an error whose `code` is `EADDRINUSE` (or another errno name) when binding fails.
   */
  add(options: MappingOptions): Promise<Mapping>;
  /**
   * Stop listening and close (reset) every open connection of that mapping. With
   * `drainTimeoutMs`, its listener closes at once and its open connections get that long to
   * finish first; the mapping stays in `stats()` until it is gone.
   */
  remove(mapping: Mapping | number, options?: CloseOptions): Promise<DrainResult>;
  /**
   * Stop everything. Resolves when every thread has exited and every socket is closed.
   * With `drainTimeoutMs`, listeners close at once and open connections get that long
   * to finish on their own first.
   */
  close(options?: CloseOptions): Promise<DrainResult>;
  /** A synchronous snapshot of the counters; reading it never stops the data path. */
  stats(): ProxyStats;
  /**
   * The counters of one mapping (by object or id); throws an error with code
   * `ERR_UNKNOWN_MAPPING` when it is not on this proxy.
   */
  stats(mapping: Mapping | number): MappingStats & { toJSON(): unknown };
  /** The mappings listening now, in the order they were added (not those being removed). */
  mappings(): Mapping[];
  /**
   * Failure events, in batches (see `EventBatch`). Recording them starts with the first
   * `'events'` listener and stops with the last one removed: without a listener the engine
   * does no work for them at all.
   */
  on(event: 'events', listener: (batch: EventBatch) => void): this;
  once(event: 'events', listener: (batch: EventBatch) => void): this;
  off(event: 'events', listener: (batch: EventBatch) => void): this;
  /** `close()`, for `await using proxy = createProxy()`. */
  [Symbol.asyncDispose](): Promise<void>;
  /** Keep the process alive while mappings exist (the default), like `net.Server.ref()`. */
  ref(): this;
  /** Let the process exit even though mappings exist, like `net.Server.unref()`. */
  unref(): this;
}

/**
 * @deprecated Use `PortspliceProxy`: this name shadows JavaScript's global `Proxy` in the
 * files that import it.
 */
export type Proxy = PortspliceProxy;
