/**
 * The pure Node engine: one net.Server per mapping, and for every accepted connection a
 * net.Socket to the target with the bytes pumped both ways through user space. It is the
 * fallback where splice(2) is not available and the baseline the benchmarks compare against,
 * so it keeps the same semantics as the splice engine: half-close forwarded after the data
 * before it, resets forwarded as resets, failures counted.
 */
import net from 'node:net';
import type { Backend, RawCounters } from './backend.js';
import type { ResolvedMapping } from './config.js';

interface StreamMapping {
  server: net.Server;
  sockets: Set<net.Socket>;
  counters: RawCounters;
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

function newCounters(): RawCounters {
  return { accepted: 0, active: 0, failed: 0, toTarget: 0n, toClient: 0n, spliced: 0n, copied: 0n };
}

export class StreamBackend implements Backend {
  #mappings = new Map<number, StreamMapping>();
  #nextId = 1;
  #ref = true;

  async add(spec: ResolvedMapping): Promise<{ id: number; port: number }> {
    const mapping: StreamMapping = {
      server: net.createServer({ allowHalfOpen: true, noDelay: true }),
      sockets: new Set(),
      counters: newCounters(),
    };
    mapping.server.on('connection', (client) => this.#forward(spec, mapping, client));
    await new Promise<void>((resolve, reject) => {
      mapping.server.once('error', reject);
      mapping.server.listen(
        { host: spec.listen.host, port: spec.listen.port, backlog: spec.backlog, ipv6Only: spec.ipv6Only },
        () => {
          mapping.server.off('error', reject);
          resolve();
        },
      );
    });
    if (!this.#ref) mapping.server.unref();
    const id = this.#nextId++;
    this.#mappings.set(id, mapping);
    return { id, port: (mapping.server.address() as net.AddressInfo).port };
  }

  #forward(spec: ResolvedMapping, mapping: StreamMapping, client: net.Socket): void {
    const counters = mapping.counters;
    counters.accepted++;
    counters.active++;
    const target = net.connect({
      host: spec.target.host,
      port: spec.target.port,
      allowHalfOpen: true,
      noDelay: true,
    });
    for (const socket of [client, target]) {
      mapping.sockets.add(socket);
      if (!this.#ref) socket.unref();
    }

    let connected = false;
    let open = 2;
    const closed = (socket: net.Socket) => {
      mapping.sockets.delete(socket);
      if (--open === 0) counters.active--;
    };
    client.on('close', () => closed(client));
    target.on('close', () => closed(target));

    const timer = setTimeout(() => target.destroy(new Error('connect timed out')), spec.connectTimeoutMs);
    timer.unref();
    client.pause();
    target.on('connect', () => {
      connected = true;
      clearTimeout(timer);
      client.resume();
    });

    // A reset on one side resets the other, so truncation is never disguised as a clean end.
    client.on('error', () => reset(target));
    target.on('error', () => {
      if (!connected) {
        clearTimeout(timer);
        counters.failed++;
      }
      reset(client);
    });

    this.#pump(client, target, (n) => (counters.toTarget += n), counters);
    this.#pump(target, client, (n) => (counters.toClient += n), counters);
  }

  /** Moves bytes from `from` to `to` with backpressure; FIN follows the last byte. */
  #pump(from: net.Socket, to: net.Socket, count: (n: bigint) => void, counters: RawCounters): void {
    from.on('data', (chunk: Buffer) => {
      const n = BigInt(chunk.length);
      count(n);
      counters.copied += n;
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => from.resume());
    from.on('end', () => to.end());
  }

  async remove(id: number): Promise<void> {
    const mapping = this.#mappings.get(id);
    if (!mapping) return;
    this.#mappings.delete(id);
    const closed = new Promise<void>((resolve) => mapping.server.close(() => resolve()));
    for (const socket of mapping.sockets) reset(socket);
    await closed;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#mappings.keys()].map((id) => this.remove(id)));
  }

  counters(): Map<number, RawCounters> {
    const snapshot = new Map<number, RawCounters>();
    for (const [id, mapping] of this.#mappings) snapshot.set(id, { ...mapping.counters });
    return snapshot;
  }

  setRef(ref: boolean): void {
    this.#ref = ref;
    for (const mapping of this.#mappings.values()) {
      if (ref) mapping.server.ref();
      else mapping.server.unref();
      for (const socket of mapping.sockets) {
        if (ref) socket.ref();
        else socket.unref();
      }
    }
  }
}
