/**
 * TCP in the stream engine: a net.Server, and for every accepted connection a net.Socket to
 * the target with the bytes pumped both ways through user space.
 */
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import type { RawCounters } from './counters.js';
import type { ResolvedMapping } from './config.js';
import {
  ACCEPTED_HEADER_MAX,
  type ConnectionEnd,
  parseProxyHeader,
  PROXY_HEADER_TIMEOUT_MS,
  proxyHeader,
} from './proxy-protocol.js';
import type { StreamMapping } from './stream-mapping.js';
import { FAILURE_COUNTERS, failureReason, type EventQueue, type RawEvent } from './events.js';

/** Where a mapping reports its failure events: the engine's queue, and the mapping's id. */
export interface EventSink {
  queue: EventQueue;
  mapping: number;
}

/**
 * Resets a socket (RST), or closes it where Node cannot: libuv refuses to reset a socket
 * once its write side has been shut down, and Node then never closes the handle, which
 * leaks it and hangs process exit. A socket that already sent FIN is destroyed instead.
 */
function reset(socket: net.Socket): void {
  if (socket.writableEnded || socket.destroyed) socket.destroy();
  else socket.resetAndDestroy();
}

function ignore(): void {}

export class StreamTcpMapping implements StreamMapping {
  readonly counters: RawCounters;
  #spec: ResolvedMapping;
  #server: net.Server;
  #sockets = new Set<net.Socket>();
  #ref = true;
  #events: EventSink;
  /** Connections being forwarded: the slots of `maxConnections`. */
  #open = 0;
  /**
   * maxConnections: clients accepted while the mapping was full, paused and not forwarded
   * (no target connection yet), oldest first. libuv accepts every connection that is ready and
   * Node cannot stop it without closing the listener (which would reset the kernel's backlog),
   * so these stand in for the backlog the splice engine leaves them in; at most `backlog`.
   */
  #waiting: net.Socket[] = [];

  constructor(spec: ResolvedMapping, counters: RawCounters, events: EventSink) {
    this.#spec = spec;
    this.counters = counters;
    this.#events = events;
    // Node sets only the idle time; libuv fixes the interval (1 s) and the count (10).
    this.#server = net.createServer({
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: spec.keepAlive !== false,
      keepAliveInitialDelay: spec.keepAlive === false ? 0 : spec.keepAlive.idleMs,
    });
    this.#server.on('connection', (client) => this.#admit(client));
  }

  /** Queues an event when someone listens; one the full queue drops is counted. */
  #report(event: Omit<RawEvent, 'time' | 'mapping'>): void {
    const { queue, mapping } = this.#events;
    if (queue.enabled && !queue.push({ ...event, mapping })) this.counters.eventsDropped++;
  }

  listen(): Promise<number> {
    const { listen, backlog, ipv6Only } = this.#spec;
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: listen.host, port: listen.port, backlog, ipv6Only }, () => {
        this.#server.off('error', reject);
        // net.Server emits accept() failures as 'error' (libuv keeps a spare fd for EMFILE,
        // so they are rare): reported, never thrown, as the splice engine's listener does.
        this.#server.on('error', (error: NodeJS.ErrnoException) =>
          this.#report({ kind: 'listenerError', errno: error.errno ?? -osConstants.errno.EIO }),
        );
        resolve((this.#server.address() as net.AddressInfo).port);
      });
    });
  }

  stopListening(): void {
    // net.Server.close() stops accepting and leaves open connections alone.
    if (this.#server.listening) this.#server.close();
    // Closing a listener resets the connections in its backlog: so for those waiting here.
    for (const client of this.#waiting.splice(0)) reset(client);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (!this.#server.listening) resolve();
      else this.#server.close(() => resolve());
    });
    for (const socket of this.#sockets) reset(socket);
    await closed;
  }

  setRef(ref: boolean): void {
    this.#ref = ref;
    for (const handle of [this.#server, ...this.#sockets]) {
      if (ref) handle.ref();
      else handle.unref();
    }
  }

  #admit(client: net.Socket): void {
    const max = this.#spec.maxConnections;
    if (max === 0 || this.#open < max) {
      this.#start(client);
      return;
    }
    if (this.#waiting.length >= this.#spec.backlog) {
      // The kernel would not have queued it either (it drops the SYN; here it is accepted).
      reset(client);
      return;
    }
    client.pause();
    this.#sockets.add(client);
    if (!this.#ref) client.unref();
    this.#waiting.push(client);
    client.on('error', ignore);
    client.on('close', this.#leftQueue);
  }

  /** A waiting client went away (closed or reset by its peer). */
  #leftQueue = (): void => {
    for (let i = this.#waiting.length - 1; i >= 0; i--) {
      const client = this.#waiting[i]!;
      if (!client.destroyed) continue;
      this.#sockets.delete(client);
      this.#waiting.splice(i, 1);
    }
  };

  /** A slot came free: forward the oldest waiting client that is still there. */
  #release(): void {
    this.#open--;
    while (this.#waiting.length > 0 && this.#open < this.#spec.maxConnections) {
      const client = this.#waiting.shift()!;
      if (client.destroyed) continue;
      client.off('close', this.#leftQueue);
      client.off('error', ignore);
      this.#sockets.delete(client);
      this.#start(client);
    }
  }

  /**
   * An admitted client takes its slot (as the splice engine's accept does: held while its
   * PROXY header is read too, given back by #release when it closes), then is forwarded.
   */
  #start(client: net.Socket): void {
    this.counters.accepted++;
    this.#open++;
    if (this.#open === this.#spec.maxConnections) this.counters.limitReached++;
    if (this.#spec.acceptProxyProtocol) this.#readHeader(client);
    else this.#forward(client);
  }

  /**
   * acceptProxyProtocol: reads the client's PROXY header (and nothing after it: the rest of
   * the chunk is put back), then forwards with its addresses. A bad, oversized or late
   * header resets the client.
   */
  #readHeader(client: net.Socket): void {
    const counters = this.counters;
    counters.active++;
    this.#sockets.add(client);
    if (!this.#ref) client.unref();
    let received = Buffer.alloc(0);
    let done = false;
    let handedOver = false;
    const reject = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      counters.proxyHeadersRejected++;
      reset(client);
    };
    const timer = setTimeout(reject, PROXY_HEADER_TIMEOUT_MS);
    timer.unref();
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const header = parseProxyHeader(received.subarray(0, ACCEPTED_HEADER_MAX));
      if (header === 0 && received.length < ACCEPTED_HEADER_MAX) return;
      if (header === 0 || header === 'invalid' || header === 'oversized') {
        reject();
        return;
      }
      done = true;
      handedOver = true;
      clearTimeout(timer);
      client.off('data', onData);
      client.off('end', reject);
      client.pause();
      if (received.length > header.length) client.unshift(received.subarray(header.length));
      counters.proxyHeadersReceived++;
      this.#sockets.delete(client);
      counters.active--; // #forward counts it again, with its target.
      const ends =
        header.source && header.destination
          ? { source: header.source, destination: header.destination }
          : undefined;
      this.#forward(client, ends);
    };
    client.on('data', onData);
    // A client that waited for a slot (maxConnections) was paused: a 'data' listener alone
    // does not resume a stream paused explicitly.
    client.resume();
    client.on('end', reject); // FIN before a complete header.
    client.on('error', () => {
      done = true;
      clearTimeout(timer);
    });
    client.on('close', () => {
      if (handedOver) return; // #forward's own accounting from then on.
      clearTimeout(timer);
      this.#sockets.delete(client);
      counters.active--;
      this.#release();
    });
  }

  #forward(client: net.Socket, announced?: { source: ConnectionEnd; destination: ConnectionEnd }): void {
    const counters = this.counters;
    counters.active++;
    const target = net.connect({
      host: this.#spec.target.host,
      port: this.#spec.target.port,
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: this.#spec.keepAlive !== false,
      keepAliveInitialDelay: this.#spec.keepAlive === false ? 0 : this.#spec.keepAlive.idleMs,
    });
    for (const socket of [client, target]) {
      this.#sockets.add(socket);
      if (!this.#ref) socket.unref();
    }

    let connected = false;
    let open = 2;
    let idle: NodeJS.Timeout | undefined;
    const closed = (socket: net.Socket) => {
      this.#sockets.delete(socket);
      if (--open > 0) return;
      counters.active--;
      clearTimeout(idle);
      this.#release();
    };
    client.on('close', () => closed(client));
    target.on('close', () => closed(target));

    const timer = setTimeout(
      () =>
        target.destroy(
          Object.assign(new Error('connect timed out'), {
            code: 'ETIMEDOUT',
            errno: -osConstants.errno.ETIMEDOUT,
          }),
        ),
      this.#spec.connectTimeoutMs,
    );
    timer.unref();
    client.pause();
    target.on('connect', () => {
      connected = true;
      clearTimeout(timer);
      const version = this.#spec.proxyProtocol;
      if (version !== undefined) {
        // A client that reset while the target was being connected has no address left.
        if (!announced && (client.remoteAddress === undefined || client.localAddress === undefined)) {
          reset(target);
          return;
        }
        // One write before any client byte (the client is paused until now): libuv sends it
        // at once with one send() on the fresh socket, and queues a short write's rest
        // ahead of everything written after it. Chaining: the addresses the client's own
        // header announced.
        const header = announced
          ? proxyHeader(version, announced.source, announced.destination)
          : proxyHeader(
              version,
              { address: client.remoteAddress!, port: client.remotePort ?? 0 },
              { address: client.localAddress!, port: client.localPort ?? 0 },
            );
        target.write(header);
        counters.proxyHeadersSent++;
      }
      client.resume();
      if (this.#spec.idleTimeoutMs > 0) {
        // One timer per connection, refreshed when bytes move: Node keeps the timers of one
        // duration in a single list behind one libuv timer, and refresh() relinks the entry
        // there (no allocation, no system call). RST both ways, as the splice engine does.
        idle = setTimeout(() => {
          counters.idleClosed++;
          reset(client);
          reset(target);
        }, this.#spec.idleTimeoutMs);
        idle.unref();
      }
    });
    if (this.#spec.idleTimeoutMs > 0) {
      const touch = () => idle?.refresh();
      for (const socket of [client, target]) {
        socket.on('data', touch);
        socket.on('drain', touch);
      }
    }

    // A reset on one side resets the other, so truncation is never disguised as a clean end.
    client.on('error', () => reset(target));
    target.on('error', (error: NodeJS.ErrnoException) => {
      if (!connected) {
        clearTimeout(timer);
        const reason = failureReason(error.code);
        counters[FAILURE_COUNTERS[reason]]++;
        const peer =
          client.remoteAddress === undefined
            ? {}
            : { client: { host: client.remoteAddress, port: client.remotePort! } };
        this.#report({
          kind: 'targetFailure',
          reason,
          errno: error.errno ?? -osConstants.errno.EIO,
          ...peer,
        });
      }
      reset(client);
    });

    this.#pump(client, target, 'toTarget');
    this.#pump(target, client, 'toClient');
  }

  /** Moves bytes from `from` to `to` with backpressure; FIN follows the last byte. */
  #pump(from: net.Socket, to: net.Socket, counter: 'toTarget' | 'toClient'): void {
    const counters = this.counters;
    from.on('data', (chunk: Buffer) => {
      const n = BigInt(chunk.length);
      counters[counter] += n;
      counters.copied += n;
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => from.resume());
    from.on('end', () => {
      // libuv reports a reset that arrives behind unread data as a plain end of stream
      // (it stops reading at the hang-up). An empty write tells them apart: it fails on a
      // reset socket and does nothing on one that sent FIN.
      if (from.writableEnded || from.destroyed) {
        to.end();
        return;
      }
      from.write(Buffer.alloc(0), (error) => {
        if (error) reset(to);
        else to.end();
      });
    });
  }
}
