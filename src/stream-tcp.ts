/**
 * TCP in the stream engine: a net.Server, and for every accepted connection a net.Socket to
 * the target with the bytes pumped both ways through user space.
 */
import net from 'node:net';
import type { RawCounters } from './backend.js';
import type { ResolvedMapping } from './config.js';
import type { StreamMapping } from './stream-engine.js';

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
  /** Connections being forwarded: the slots of `maxConnections`. */
  #open = 0;
  /**
   * maxConnections: clients accepted while the mapping was full, paused and not forwarded
   * (no target connection yet), oldest first. libuv accepts every connection that is ready and
   * Node cannot stop it without closing the listener (which would reset the kernel's backlog),
   * so these stand in for the backlog the splice engine leaves them in; at most `backlog`.
   */
  #waiting: net.Socket[] = [];

  constructor(spec: ResolvedMapping, counters: RawCounters) {
    this.#spec = spec;
    this.counters = counters;
    // Node sets only the idle time; libuv fixes the interval (1 s) and the count (10).
    this.#server = net.createServer({
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: spec.keepAlive !== false,
      keepAliveInitialDelay: spec.keepAlive === false ? 0 : spec.keepAlive.idleMs,
    });
    this.#server.on('connection', (client) => this.#admit(client));
  }

  listen(): Promise<number> {
    const { listen, backlog, ipv6Only } = this.#spec;
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: listen.host, port: listen.port, backlog, ipv6Only }, () => {
        this.#server.off('error', reject);
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
      this.#forward(client);
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
      this.#forward(client);
    }
  }

  #forward(client: net.Socket): void {
    const counters = this.counters;
    counters.accepted++;
    counters.active++;
    this.#open++;
    if (this.#open === this.#spec.maxConnections) counters.limitReached++;
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
      () => target.destroy(new Error('connect timed out')),
      this.#spec.connectTimeoutMs,
    );
    timer.unref();
    client.pause();
    target.on('connect', () => {
      connected = true;
      clearTimeout(timer);
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
    target.on('error', () => {
      if (!connected) {
        clearTimeout(timer);
        counters.failed++;
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
