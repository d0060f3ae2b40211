/**
 * UDP in the stream engine: one dgram socket listening, and per client address a flow
 * socket connected to the target, so that only replies from exactly target:port are
 * accepted. Simpler and slower than the native engine (one datagram per call), and unlike
 * it, Node cannot choose a reply's source address: on a wildcard listener replies leave
 * from whatever address the kernel picks for the client's route.
 */
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { RawCounters } from './counters.js';
import type { ResolvedMapping } from './config.js';
import type { StreamMapping } from './stream-mapping.js';

interface Flow {
  socket: dgram.Socket;
  client: { address: string; port: number };
  lastActive: number;
  /** Datagrams that arrived before the flow socket finished connecting. */
  pending: Buffer[] | undefined;
}

/** Datagrams held per flow while its socket connects; more are dropped as queue-full. */
const MAX_PENDING = 64;

function dropReason(error: NodeJS.ErrnoException): 'droppedQueueFull' | 'droppedRefused' | 'droppedOther' {
  if (error.code === 'EAGAIN' || error.code === 'ENOBUFS') return 'droppedQueueFull';
  if (error.code === 'ECONNREFUSED') return 'droppedRefused';
  return 'droppedOther';
}

export class StreamUdpMapping implements StreamMapping {
  readonly counters: RawCounters;
  #spec: ResolvedMapping;
  #socket: dgram.Socket;
  /** Flows by "address|port", least recently active first (a datagram either way moves a flow last). */
  #flows = new Map<string, Flow>();
  #timer: NodeJS.Timeout;
  #ref = true;
  #closed = false;

  constructor(spec: ResolvedMapping, counters: RawCounters) {
    this.#spec = spec;
    this.counters = counters;
    this.#socket = dgram.createSocket({
      type: isIPv6(spec.listen.host) ? 'udp6' : 'udp4',
      ipv6Only: spec.ipv6Only,
    });
    this.#socket.on('message', (message, rinfo) => this.#forward(message, rinfo));
    this.#socket.on('error', () => {});
    const every = Math.max(10, Math.min(1000, Math.floor(spec.udpTimeoutMs / 4)));
    this.#timer = setInterval(() => this.#expire(), every);
    this.#timer.unref();
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#socket.once('error', reject);
      this.#socket.bind(this.#spec.listen.port, this.#spec.listen.host, () => {
        this.#socket.off('error', reject);
        resolve(this.#socket.address().port);
      });
    });
  }

  stopListening(): void {
    // Replies go out through the listening socket: a UDP mapping cannot outlive it.
    void this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    for (const key of [...this.#flows.keys()]) this.#closeFlow(key);
    await new Promise<void>((resolve) => this.#socket.close(() => resolve()));
  }

  setRef(ref: boolean): void {
    this.#ref = ref;
    for (const socket of [this.#socket, ...[...this.#flows.values()].map((f) => f.socket)]) {
      if (ref) socket.ref();
      else socket.unref();
    }
  }

  #forward(message: Buffer, rinfo: dgram.RemoteInfo): void {
    const key = `${rinfo.address}|${rinfo.port}`;
    let flow = this.#flows.get(key);
    if (flow) this.#touch(key, flow);
    else flow = this.#openFlow(key, rinfo);
    if (flow.pending) {
      if (flow.pending.length < MAX_PENDING) flow.pending.push(message);
      else this.counters.droppedQueueFull++;
      return;
    }
    this.#send(flow, message);
  }

  #send(flow: Flow, message: Buffer): void {
    flow.socket.send(message, (error) => {
      if (error) {
        this.counters[dropReason(error)]++;
        return;
      }
      this.counters.datagramsToTarget++;
      this.counters.toTarget += BigInt(message.length);
      this.counters.copied += BigInt(message.length);
    });
  }

  #openFlow(key: string, rinfo: dgram.RemoteInfo): Flow {
    if (this.#flows.size >= this.#spec.udpMaxFlows) {
      const oldest = this.#flows.keys().next().value as string;
      this.#closeFlow(oldest);
      this.counters.flowsEvicted++;
    }
    const { host, port } = this.#spec.target;
    const socket = dgram.createSocket(isIPv6(host) ? 'udp6' : 'udp4');
    const flow: Flow = {
      socket,
      client: { address: rinfo.address, port: rinfo.port },
      lastActive: Date.now(),
      pending: [],
    };
    socket.connect(port, host, () => {
      const pending = flow.pending ?? [];
      flow.pending = undefined;
      for (const message of pending) this.#send(flow, message);
    });
    // ECONNREFUSED (ICMP port unreachable) and the like do not end a flow.
    socket.on('error', () => {});
    socket.on('message', (reply) => {
      this.#touch(key, flow);
      this.#socket.send(reply, flow.client.port, flow.client.address, (error) => {
        if (error) {
          this.counters[dropReason(error)]++;
          return;
        }
        this.counters.datagramsToClient++;
        this.counters.toClient += BigInt(reply.length);
        this.counters.copied += BigInt(reply.length);
      });
    });
    if (!this.#ref) socket.unref();
    this.#flows.set(key, flow);
    this.counters.flowsCreated++;
    this.counters.flowsActive++;
    return flow;
  }

  /**
   * A datagram either way keeps a flow alive (Docker 28.0.2+): re-inserting it keeps the map
   * in order of last activity, so #expire and eviction only look at its head.
   */
  #touch(key: string, flow: Flow): void {
    flow.lastActive = Date.now();
    this.#flows.delete(key);
    this.#flows.set(key, flow);
  }

  #closeFlow(key: string): void {
    const flow = this.#flows.get(key);
    if (!flow) return;
    this.#flows.delete(key);
    flow.socket.close();
    this.counters.flowsActive--;
  }

  #expire(): void {
    const now = Date.now();
    for (const [key, flow] of this.#flows) {
      if (flow.lastActive + this.#spec.udpTimeoutMs > now) break;
      this.#closeFlow(key);
      this.counters.flowsExpired++;
    }
  }
}
