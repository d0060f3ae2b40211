// UDP helpers for the portsplice integration tests (udp.test.mjs).
//
// Like helpers.mjs, this module only declares functions: `node --test test/` may run it on its
// own as if it were a test file.

import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';

import { V4, withTimeout, sleep } from './helpers.mjs';

/** A second loopback address (127.0.0.0/8 is all loopback on Linux). */
export const V4B = '127.0.0.2';

/** The largest UDP payload over IPv4: 65535 - 20 (IP header) - 8 (UDP header). */
export const MAX_UDP4_PAYLOAD = 65507;

/** The largest UDP payload over IPv6 (without jumbograms): 65535 - 8 (UDP header). */
export const MAX_UDP6_PAYLOAD = 65527;

/**
 * Open a UDP socket bound to host:port (port 0 picks one), optionally connected to
 * `connectTo` ({ host, port }). Every datagram it receives is recorded in `received`
 * (`{ msg, rinfo }`, never consumed) and queued in `inbox` (consumed by `recv()`); errors are
 * recorded in `errors` so that an ICMP error never becomes an uncaught exception.
 * `onMessage(msg, rinfo, peer)` (optional) runs for each datagram, e.g. to reply.
 * Push the result into `bag` (an array) to have it closed by `closeAll(bag)`.
 */
export async function openUdp({ host = V4, port = 0, connectTo, onMessage, bag } = {}) {
  const socket = dgram.createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
  const peer = {
    socket,
    host,
    port: 0,
    received: [],
    inbox: [],
    errors: [],
    waiters: new Set(),
    closed: false,
    /** Next queued datagram ({ msg, rinfo }), waiting for it up to `timeout` ms. */
    recv(timeout = 2000, what = `a datagram on ${host}:${peer.port}`) {
      if (peer.inbox.length) return Promise.resolve(peer.inbox.shift());
      let waiter;
      const arrived = new Promise((resolve) => {
        waiter = () => {
          peer.waiters.delete(waiter);
          resolve(peer.inbox.shift());
        };
        peer.waiters.add(waiter);
      });
      return withTimeout(arrived, timeout, what, () => peer.waiters.delete(waiter));
    },
    /** Wait `ms` and return (and consume) every datagram that was queued by then. */
    async drain(ms) {
      await sleep(ms);
      return peer.inbox.splice(0);
    },
    /** Send `payload` (to port/host, or to the connected peer when they are omitted). */
    send(payload, toPort, toHost) {
      return withTimeout(
        new Promise((resolve, reject) => {
          const done = (err) => (err ? reject(err) : resolve());
          if (toPort === undefined) socket.send(payload, done);
          else socket.send(payload, toPort, toHost, done);
        }),
        2000,
        `send ${payload.length} bytes from ${host}:${peer.port}`,
      );
    },
    close() {
      if (peer.closed) return Promise.resolve();
      peer.closed = true;
      return withTimeout(
        new Promise((resolve) => socket.close(() => resolve())),
        2000,
        `close udp socket ${host}:${peer.port}`,
      ).catch(() => {});
    },
  };
  socket.on('error', (err) => peer.errors.push(err));
  socket.on('message', (msg, rinfo) => {
    const entry = { msg, rinfo };
    peer.received.push(entry);
    peer.inbox.push(entry);
    for (const waiter of [...peer.waiters]) {
      if (!peer.inbox.length) break;
      waiter();
    }
    onMessage?.(msg, rinfo, peer);
  });
  bag?.push(peer);
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(port, host, () => {
          socket.off('error', reject);
          resolve();
        });
      }),
      2000,
      `bind udp ${host}:${port}`,
    );
    peer.port = socket.address().port;
    if (connectTo) {
      await withTimeout(
        new Promise((resolve, reject) => {
          socket.once('error', reject);
          socket.connect(connectTo.port, connectTo.host, () => {
            socket.off('error', reject);
            resolve();
          });
        }),
        2000,
        `connect udp to ${connectTo.host}:${connectTo.port}`,
      );
    }
  } catch (err) {
    await peer.close();
    throw err;
  }
  return peer;
}

/**
 * A UDP target on host:port. By default it echoes every datagram back to its sender;
 * `reply(msg, rinfo)` may instead return a Buffer to send back, or null to stay silent.
 * `received` records every datagram with its sender.
 */
export function startUdpServer({ host = V4, port = 0, reply = (msg) => msg, bag } = {}) {
  return openUdp({
    host,
    port,
    bag,
    onMessage(msg, rinfo, peer) {
      const answer = reply(msg, rinfo);
      if (answer) peer.socket.send(answer, rinfo.port, rinfo.address, () => {});
    },
  });
}

/** A UDP port on `host` that nobody is bound to (bind :0, read the port, close). */
export async function reserveUdpPort(host = V4) {
  const peer = await openUdp({ host });
  const { port } = peer;
  await peer.close();
  return port;
}

/** Close every socket opened by openUdp/startUdpServer (bounded, ignoring errors). */
export async function closeAll(bag) {
  await Promise.all(bag.splice(0).map((peer) => peer.close()));
}
