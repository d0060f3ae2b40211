// @test-tag timing: flow expiry windows
// UDP forwarding: echo over IPv4, IPv6 and IPv6-to-IPv4 (and an empty datagram), 50 concurrent
// clients kept apart, flow expiry (a datagram either way keeps a flow alive, as in Docker
// 28.0.2+: a one-sided client keeps one source port, also when the target's port is closed), the largest IPv4 and IPv6 datagrams, udpMaxFlows eviction (LRU, and
// under a burst), the reply's source address on wildcard listeners (0.0.0.0 and dual-stack ::),
// only target:port may answer a flow, a target that starts listening late, removing a mapping
// or closing the proxy with live flows, and exact stats accounting.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  V6,
  sha256,
  sleep,
  withTimeout,
  waitFor,
  statsOf,
  waitStats,
  safeRemove,
  safeClose,
  show,
} from './helpers.mjs';
import {
  V4B,
  MAX_UDP4_PAYLOAD,
  MAX_UDP6_PAYLOAD,
  openUdp,
  startUdpServer,
  reserveUdpPort,
  closeAll,
} from './udp-helpers.mjs';

/** Add a udp mapping from listenHost:0 to targetHost:targetPort, bounded. */
function addUdp(proxy, targetPort, { listenHost = V4, targetHost = V4, ...rest } = {}) {
  return withTimeout(
    proxy.add({
      proto: 'udp',
      listen: { host: listenHost, port: 0 },
      target: { host: targetHost, port: targetPort },
      ...rest,
    }),
    5000,
    `proxy.add udp ${listenHost} -> ${targetHost}:${targetPort}`,
  );
}

/** A distinct, recognisable payload. */
function tagged(label) {
  return Buffer.from(`${label} ${randomBytes(8).toString('hex')}`);
}

/**
 * Send `payload` through the proxy and return the reply ({ msg, rinfo }), bounded. On a timeout
 * the error message gets `explain()` (e.g. the mapping's stats) appended.
 */
async function roundTrip(client, payload, port, host, what = 'reply through the proxy', explain) {
  await client.send(payload, port, host);
  try {
    return await client.recv(2000, what);
  } catch (err) {
    if (explain) err.message += `; ${explain()}`;
    throw err;
  }
}

const texts = (entries) => entries.map((e) => e.msg.toString());

for (const engine of ENGINES) {
  describe(`udp [${engine}]`, () => {
    let proxy;

    before(() => {
      proxy = createProxy({ engine });
    });

    after(async () => {
      await safeClose(proxy);
    });

    const echoCases = [
      { name: 'IPv4', listenHost: V4, targetHost: V4, clientHost: V4 },
      { name: 'IPv6 (::1 to ::1)', listenHost: V6, targetHost: V6, clientHost: V6 },
      { name: 'IPv6 listener, IPv4 target', listenHost: V6, targetHost: V4, clientHost: V6 },
    ];
    for (const { name, listenHost, targetHost, clientHost } of echoCases) {
      test(`echo over ${name}`, async (t) => {
        const bag = [];
        let m;
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeAll(bag));
        const target = await startUdpServer({ host: targetHost, bag });
        m = await addUdp(proxy, target.port, { listenHost, targetHost });
        assert.equal(m.proto, 'udp');
        assert.equal(m.listen.host, listenHost);
        assert.ok(m.listen.port > 0 && m.listen.port < 65536, `bound port ${m.listen.port}`);
        assert.deepEqual({ ...m.target }, { host: targetHost, port: target.port });

        const client = await openUdp({ host: clientHost, bag });
        const sent = [];
        for (let i = 0; i < 3; i++) {
          const payload = tagged(`datagram ${i}`);
          sent.push(payload.toString());
          const { msg, rinfo } = await roundTrip(client, payload, m.listen.port, listenHost);
          assert.equal(msg.toString(), payload.toString(), 'echoed payload');
          assert.equal(rinfo.address, listenHost, 'the reply comes from the listen address');
          assert.equal(rinfo.port, m.listen.port, 'the reply comes from the listen port');
        }
        // The target saw the proxy's one flow socket, not the client.
        assert.deepEqual(texts(target.received), sent);
        const sources = new Set(target.received.map((e) => `${e.rinfo.address}|${e.rinfo.port}`));
        assert.equal(sources.size, 1, `one flow socket: ${[...sources]}`);
        assert.equal(target.received[0].rinfo.address, targetHost, 'the flow socket is on the target family');
        assert.ok(
          !(clientHost === targetHost && target.received[0].rinfo.port === client.port),
          'the target sees the proxy, not the client',
        );
        const st = await waitStats(proxy, m, (s) => s.datagrams.toClient === 3, 'datagrams.toClient === 3');
        assert.equal(st.proto, 'udp');
        assert.deepEqual(st.flows, { active: 1, created: 1, expired: 0, evicted: 0 });
        assert.deepEqual(st.datagrams, { toTarget: 3, toClient: 3 });
        assert.equal(st.dropped.total, 0, `dropped ${show(st.dropped)}`);
      });
    }

    test('an empty datagram is forwarded both ways', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port);
      const client = await openUdp({ bag });
      const { msg } = await roundTrip(client, Buffer.alloc(0), m.listen.port, V4, 'empty echo');
      assert.equal(msg.length, 0);
      assert.equal(target.received.length, 1);
      assert.equal(target.received[0].msg.length, 0);
      const st = await waitStats(proxy, m, (s) => s.datagrams.toClient === 1, 'datagrams.toClient === 1');
      assert.deepEqual(st.datagrams, { toTarget: 1, toClient: 1 });
      assert.equal(st.bytes.toTarget, 0n);
      assert.equal(st.bytes.toClient, 0n);
    });

    test('50 clients at once each get back exactly their own datagrams', { timeout: 20000 }, async (t) => {
      const N = 50;
      const K = 5;
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port);
      const clients = await Promise.all(Array.from({ length: N }, () => openUdp({ bag })));
      const payloads = clients.map((_, i) =>
        Array.from({ length: K }, (_, j) => tagged(`client ${i} datagram ${j}`)),
      );
      // All clients run at once, each with one datagram in flight at a time.
      await withTimeout(
        Promise.all(
          clients.map(async (client, i) => {
            for (let j = 0; j < K; j++) {
              await client.send(payloads[i][j], m.listen.port, V4);
              await waitFor(() => client.received.length > j, {
                timeout: 5000,
                what: `client ${i}: reply ${j}`,
                describe: () => show(texts(client.received)),
              });
            }
          }),
        ),
        15000,
        `${N} clients x ${K} datagrams`,
      );
      await sleep(100); // Anything misrouted or duplicated would show up by now.
      for (let i = 0; i < N; i++) {
        assert.deepEqual(
          texts(clients[i].received).sort(),
          payloads[i].map(String).sort(),
          `client ${i} received exactly its own payloads`,
        );
        for (const { rinfo } of clients[i].received) assert.equal(rinfo.port, m.listen.port);
      }
      const sources = new Set(target.received.map((e) => e.rinfo.port));
      assert.equal(sources.size, N, 'the target saw one flow socket per client');
      const st = await waitStats(
        proxy,
        m,
        (s) => s.datagrams.toClient === N * K,
        `datagrams.toClient === ${N * K}`,
      );
      assert.deepEqual(st.flows, { active: N, created: N, expired: 0, evicted: 0 }, show(st.flows));
      assert.deepEqual(st.datagrams, { toTarget: N * K, toClient: N * K });
      assert.equal(st.dropped.total, 0, `dropped ${show(st.dropped)}`);
    });

    test('a flow whose target stays silent expires after udpTimeoutMs', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ reply: () => null, bag });
      m = await addUdp(proxy, target.port, { udpTimeoutMs: 200 });
      const client = await openUdp({ bag });
      const t0 = Date.now();
      await client.send(tagged('once'), m.listen.port, V4);
      await waitFor(() => target.received.length === 1, {
        timeout: 2000,
        what: 'the target got the datagram',
      });
      const st = await waitStats(
        proxy,
        m,
        (s) => s.flows.expired === 1 && s.flows.active === 0,
        'flows.expired === 1 && flows.active === 0',
        3000,
      );
      const elapsed = Date.now() - t0;
      assert.ok(elapsed >= 190, `expired after ${elapsed} ms, before udpTimeoutMs (200)`);
      assert.ok(elapsed <= 1000, `expired only after ${elapsed} ms (udpTimeoutMs 200)`);
      assert.deepEqual(st.flows, { active: 0, created: 1, expired: 1, evicted: 0 });
      // The same client gets a new flow next time.
      await client.send(tagged('again'), m.listen.port, V4);
      await waitStats(proxy, m, (s) => s.flows.created === 2 && s.flows.active === 1, 'a second flow');
      await waitFor(() => target.received.length === 2, {
        timeout: 2000,
        what: 'the target got the 2nd datagram',
      });
      assert.deepEqual(await client.drain(0), [], 'the silent target sent nothing back');
    });

    test('a client that only sends keeps one flow (one source port) for several udpTimeoutMs', async (t) => {
      // Docker 28.0.2+ (moby TestUDPOneSided): a datagram either way keeps a flow alive.
      // The gaps between sends (100 ms) stay far below the timeout (1 s) even on a loaded
      // machine or under ASan; the client sends for 3.5 timeouts.
      const TIMEOUT = 1000;
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ reply: () => null, bag });
      m = await addUdp(proxy, target.port, { udpTimeoutMs: TIMEOUT });
      const client = await openUdp({ bag });
      const t0 = Date.now();
      let n = 0;
      let lastSent = t0;
      while (Date.now() - t0 < 3.5 * TIMEOUT) {
        // Taken before the send: the proxy sees the datagram after this.
        lastSent = Date.now();
        await client.send(Buffer.from(`tick ${n++}`), m.listen.port, V4);
        await sleep(100);
      }
      await waitFor(() => target.received.length === n, {
        timeout: 3000,
        what: `the target got all ${n} datagrams`,
        describe: () => `${target.received.length} arrived`,
      });
      const ports = new Set(target.received.map((e) => e.rinfo.port));
      assert.equal(ports.size, 1, `the target saw one source port, not ${[...ports].join(', ')}`);
      assert.deepEqual(
        texts(target.received),
        Array.from({ length: n }, (_, i) => `tick ${i}`),
        'every datagram, in order',
      );
      // One flow carried them all (whether it has expired by now depends on the load).
      assert.equal(statsOf(proxy, m).flows.created, 1, 'one flow');
      // Once the client stops, the idle flow expires: not before udpTimeoutMs after its
      // last datagram (the proxy's clock is read after that datagram arrived).
      const st = await waitStats(
        proxy,
        m,
        (s) => s.flows.expired === 1 && s.flows.active === 0,
        'expiry once the client stops',
        TIMEOUT + 5000,
      );
      const idle = Date.now() - lastSent;
      assert.ok(
        idle >= TIMEOUT - 20,
        `expired ${idle} ms after the last datagram, before udpTimeoutMs (${TIMEOUT})`,
      );
      assert.deepEqual(st.flows, { active: 0, created: 1, expired: 1, evicted: 0 });
      // The next datagram opens a new flow, from a new source port.
      await client.send(Buffer.from('after expiry'), m.listen.port, V4);
      await waitFor(() => target.received.length === n + 1, {
        timeout: 2000,
        what: 'the datagram after expiry',
      });
      assert.equal(statsOf(proxy, m).flows.created, 2);
    });

    test('a flow kept alive by replies does not expire', async (t) => {
      const TIMEOUT = 300;
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port, { udpTimeoutMs: TIMEOUT });
      const client = await openUdp({ bag });
      const t0 = Date.now();
      let n = 0;
      while (Date.now() - t0 < 2 * TIMEOUT) {
        const payload = Buffer.from(`keepalive ${n}`);
        const { msg } = await roundTrip(client, payload, m.listen.port, V4, `reply ${n++}`);
        assert.equal(msg.toString(), payload.toString());
        const st = statsOf(proxy, m);
        assert.equal(
          st.flows.expired,
          0,
          `expired after ${Date.now() - t0} ms despite replies: ${show(st.flows)}`,
        );
        await sleep(50);
      }
      const st = await waitStats(proxy, m, (s) => s.datagrams.toClient === n, `datagrams.toClient === ${n}`);
      assert.deepEqual(st.flows, { active: 1, created: 1, expired: 0, evicted: 0 }, show(st.flows));
      // Once the exchange stops, the flow does expire.
      await waitStats(
        proxy,
        m,
        (s) => s.flows.expired === 1 && s.flows.active === 0,
        'expiry once the replies stop',
        TIMEOUT + 1500,
      );
    });

    for (const [family, host, size] of [
      ['IPv4', V4, MAX_UDP4_PAYLOAD],
      ['IPv6', V6, MAX_UDP6_PAYLOAD],
    ]) {
      test(`the largest ${family} datagram (${size} bytes) passes whole both ways`, async (t) => {
        const bag = [];
        let m;
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeAll(bag));
        const target = await startUdpServer({ host, bag });
        m = await addUdp(proxy, target.port, { listenHost: host, targetHost: host });
        const client = await openUdp({ host, bag });
        const payloads = [randomBytes(size), randomBytes(size)];
        for (const [i, payload] of payloads.entries()) {
          const { msg } = await roundTrip(client, payload, m.listen.port, host, `echo of big datagram ${i}`);
          assert.equal(target.received[i].msg.length, size, 'bytes the target received');
          assert.equal(sha256(target.received[i].msg), sha256(payload), 'sha256 of what the target received');
          assert.equal(msg.length, size, 'bytes the client received');
          assert.equal(sha256(msg), sha256(payload), 'sha256 of what the client received');
        }
        const total = BigInt(2 * size);
        const st = await waitStats(proxy, m, (s) => s.datagrams.toClient === 2, 'datagrams.toClient === 2');
        assert.deepEqual(st.datagrams, { toTarget: 2, toClient: 2 });
        assert.equal(st.bytes.toTarget, total, show(st.bytes));
        assert.equal(st.bytes.toClient, total, show(st.bytes));
        assert.equal(st.dropped.truncated, 0);
        assert.equal(st.dropped.total, 0, `dropped ${show(st.dropped)}`);
      });
    }

    test('udpMaxFlows: 3 with 5 clients evicts the least recently active flows', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port, { udpMaxFlows: 3 });
      const clients = await Promise.all(Array.from({ length: 5 }, () => openUdp({ bag })));
      const ping = async (i) => {
        const payload = tagged(`client ${i}`);
        const { msg } = await roundTrip(clients[i], payload, m.listen.port, V4, `reply to client ${i}`);
        assert.equal(msg.toString(), payload.toString(), `client ${i} got its own reply`);
      };
      for (let i = 0; i < 5; i++) await ping(i);
      let st = statsOf(proxy, m);
      assert.ok(st.flows.evicted >= 2, `evicted >= 2: ${show(st.flows)}`);
      assert.ok(st.flows.active <= 3, `active <= 3: ${show(st.flows)}`);
      assert.deepEqual(st.flows, { active: 3, created: 5, expired: 0, evicted: 2 });
      // Clients 0 and 1 were the least recently active: 2, 3 and 4 still have their flows.
      for (const i of [2, 3, 4]) await ping(i);
      st = statsOf(proxy, m);
      assert.equal(st.flows.created, 5, `clients 2-4 kept their flows: ${show(st.flows)}`);
      // Client 0 comes back: a new flow, evicting client 2's (now the least recently active).
      await ping(0);
      st = statsOf(proxy, m);
      assert.deepEqual(st.flows, { active: 3, created: 6, expired: 0, evicted: 3 });
      for (const i of [3, 4, 0]) await ping(i);
      assert.equal(statsOf(proxy, m).flows.created, 6, 'clients 3, 4 and 0 kept their flows');
    });

    test('udpMaxFlows: a client that only sends counts as active for eviction', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ reply: () => null, bag });
      m = await addUdp(proxy, target.port, { udpMaxFlows: 3 });
      const clients = await Promise.all(Array.from({ length: 4 }, () => openUdp({ bag })));
      /** Send from client i and return the source port the target saw. */
      const send = async (i) => {
        const before = target.received.length;
        await clients[i].send(tagged(`client ${i}`), m.listen.port, V4);
        await waitFor(() => target.received.length === before + 1, {
          timeout: 2000,
          what: `client ${i}'s datagram`,
        });
        return target.received[before].rinfo.port;
      };
      const first = [await send(0), await send(1), await send(2)];
      // Client 0 sends again: its flow is now the most recently active, client 1's the least.
      assert.equal(await send(0), first[0], 'client 0 kept its flow');
      await send(3);
      assert.deepEqual(statsOf(proxy, m).flows, { active: 3, created: 4, expired: 0, evicted: 1 });
      assert.equal(await send(0), first[0], 'client 0 still has its flow: client 1 was evicted');
      assert.equal(await send(2), first[2], 'client 2 still has its flow');
      assert.equal(statsOf(proxy, m).flows.created, 4);
    });

    test('udpMaxFlows: 3 with a burst from 5 clients at once', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port, { udpMaxFlows: 3 });
      const clients = await Promise.all(Array.from({ length: 5 }, () => openUdp({ bag })));
      await Promise.all(
        clients.flatMap((client, i) =>
          [0, 1, 2].map((j) => client.send(Buffer.from(`client ${i} datagram ${j}`), m.listen.port, V4)),
        ),
      );
      await waitFor(() => target.received.length === 15, {
        timeout: 2000,
        what: 'the target got all 15 datagrams',
        describe: () => target.received.length,
      });
      await sleep(100);
      let st = statsOf(proxy, m);
      assert.ok(st.flows.created >= 5, `created >= 5: ${show(st.flows)}`);
      assert.ok(st.flows.evicted >= 2, `evicted >= 2: ${show(st.flows)}`);
      assert.ok(st.flows.active <= 3, `active <= 3: ${show(st.flows)}`);
      assert.equal(st.flows.active, st.flows.created - st.flows.evicted - st.flows.expired, show(st.flows));
      // Every reply that did come back went to the client it belongs to.
      for (const [i, client] of clients.entries()) {
        for (const text of texts(client.received)) assert.match(text, new RegExp(`^client ${i} `));
      }
      // The mapping still serves a newcomer, within the limit.
      const fresh = await openUdp({ bag });
      const payload = tagged('newcomer');
      const { msg } = await roundTrip(fresh, payload, m.listen.port, V4, 'reply to a newcomer');
      assert.equal(msg.toString(), payload.toString());
      st = statsOf(proxy, m);
      assert.ok(st.flows.active <= 3, `active <= 3: ${show(st.flows)}`);
    });

    test(
      'replies leave from the address the client sent to (wildcard listener)',
      { skip: engine === 'stream' ? 'Node dgram cannot choose the reply source address' : false },
      async (t) => {
        const bag = [];
        let m;
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeAll(bag));
        const target = await startUdpServer({ bag });
        m = await addUdp(proxy, target.port, { listenHost: '0.0.0.0' });
        const port = m.listen.port;
        // Unconnected: the kernel shows whatever source the reply has.
        const loose = await openUdp({ bag });
        const { rinfo } = await roundTrip(
          loose,
          tagged('to .2'),
          port,
          V4B,
          'reply via 127.0.0.2',
          () => `target got ${target.received.length} datagrams; stats ${show(statsOf(proxy, m))}`,
        );
        assert.equal(rinfo.address, V4B, 'reply to a datagram sent to 127.0.0.2');
        assert.equal(rinfo.port, port);
        // Connected (as a DNS resolver does): only a reply from exactly that address arrives.
        for (const address of [V4B, V4]) {
          const client = await openUdp({ bag, connectTo: { host: address, port } });
          const payload = tagged(`connected to ${address}`);
          await client.send(payload);
          const reply = await client.recv(2000, `reply on a socket connected to ${address}:${port}`);
          assert.equal(reply.msg.toString(), payload.toString());
          assert.equal(reply.rinfo.address, address);
          assert.equal(reply.rinfo.port, port);
        }
      },
    );

    test(
      'replies leave from the address the client sent to (dual-stack wildcard listener ::)',
      { skip: engine === 'stream' ? 'Node dgram cannot choose the reply source address' : false },
      async (t) => {
        const bag = [];
        let m;
        t.after(() => safeRemove(proxy, m));
        t.after(() => closeAll(bag));
        const target = await startUdpServer({ bag });
        m = await addUdp(proxy, target.port, { listenHost: '::' });
        const port = m.listen.port;
        for (const [clientHost, address] of [
          [V4, V4B],
          [V4, V4],
          [V6, V6],
        ]) {
          const client = await openUdp({ host: clientHost, bag });
          const payload = tagged(`to ${address}`);
          const { msg, rinfo } = await roundTrip(
            client,
            payload,
            port,
            address,
            `reply via ${address}`,
            () => `target got ${target.received.length} datagrams; stats ${show(statsOf(proxy, m))}`,
          );
          assert.equal(msg.toString(), payload.toString());
          assert.equal(rinfo.address, address, `reply to a datagram sent to ${address}`);
          assert.equal(rinfo.port, port);
        }
      },
    );

    test('only replies from exactly target:port reach the client', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port);
      const client = await openUdp({ bag });
      await roundTrip(client, tagged('hello'), m.listen.port, V4);
      const flow = target.received[0].rinfo;
      // Another socket on the target's address sends to the flow socket: dropped.
      const stranger = await openUdp({ bag });
      await stranger.send(Buffer.from('spoofed'), flow.port, flow.address);
      assert.deepEqual(texts(await client.drain(200)), [], 'a stranger reached the client');
      // The target itself may send unsolicited datagrams to the flow: they are forwarded.
      await target.send(Buffer.from('pushed'), flow.port, flow.address);
      const { msg, rinfo } = await client.recv(2000, 'datagram pushed by the target');
      assert.equal(msg.toString(), 'pushed');
      assert.equal(rinfo.port, m.listen.port);
    });

    test('a target that starts listening late then gets the same flow through', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const targetPort = await reserveUdpPort(V4);
      m = await addUdp(proxy, targetPort);
      const client = await openUdp({ bag });
      // Nothing listens: ICMP port unreachable comes back for each datagram.
      for (let i = 0; i < 3; i++) {
        await client.send(Buffer.from(`before ${i}`), m.listen.port, V4);
        await sleep(30);
      }
      assert.deepEqual(texts(await client.drain(200)), [], 'nothing answers yet');
      let st = statsOf(proxy, m);
      assert.equal(st.flows.created, 1, `flows ${show(st.flows)}`);
      assert.equal(st.flows.active, 1, `the refused flow is still open: ${show(st.flows)}`);

      const target = await startUdpServer({ port: targetPort, bag });
      const payload = tagged('after');
      const { msg } = await roundTrip(client, payload, m.listen.port, V4, 'reply once the target listens');
      assert.equal(msg.toString(), payload.toString());
      assert.deepEqual(texts(target.received), [payload.toString()]);
      st = statsOf(proxy, m);
      assert.equal(st.flows.created, 1, `the same flow carried it: ${show(st.flows)}`);

      // The listener still serves new clients.
      const other = await openUdp({ bag });
      const second = tagged('second client');
      const reply = await roundTrip(other, second, m.listen.port, V4, 'reply to a second client');
      assert.equal(reply.msg.toString(), second.toString());
      st = await waitStats(proxy, m, (s) => s.flows.created === 2, 'flows.created === 2');
      assert.equal(st.flows.active, 2);
    });

    test('removing a mapping with live flows closes the listener and its flows', async (t) => {
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({ bag });
      m = await addUdp(proxy, target.port);
      const port = m.listen.port;
      const clients = await Promise.all([0, 1, 2].map(() => openUdp({ bag })));
      const flows = [];
      for (const [i, client] of clients.entries()) {
        await roundTrip(client, Buffer.from(`client ${i}`), port, V4);
        flows.push(target.received.find((e) => e.msg.toString() === `client ${i}`).rinfo);
      }
      // While the mapping exists, the target can reach a client through its flow.
      await target.send(Buffer.from('push before'), flows[0].port, flows[0].address);
      assert.equal((await clients[0].recv(2000, 'push before remove')).msg.toString(), 'push before');
      await waitStats(proxy, m, (s) => s.flows.active === 3, 'flows.active === 3');

      await withTimeout(proxy.remove(m), 5000, 'proxy.remove');
      assert.equal(statsOf(proxy, m), undefined, 'the mapping left stats()');
      assert.ok(!proxy.stats().mappings.some((s) => s.id === m.id));
      const seen = target.received.length;

      // The flows are closed: the target's datagrams reach nobody.
      for (const flow of flows) await target.send(Buffer.from('push after'), flow.port, flow.address);
      // The listener is closed: a datagram to its port gets nothing back.
      for (const client of clients) await client.send(Buffer.from('after remove'), port, V4);
      const late = await openUdp({ bag });
      await late.send(Buffer.from('new client'), port, V4);
      await sleep(300);
      for (const [i, peer] of [...clients, late].entries()) {
        assert.deepEqual(texts(await peer.drain(0)), [], `socket ${i} got something after remove`);
      }
      assert.equal(target.received.length, seen, 'the target got nothing after remove');
      // And the port is free again.
      const rebound = await openUdp({ port, bag });
      assert.equal(rebound.port, port);
    });

    test('a flow to a closed port lives while the client sends, and expires once it stops', async (t) => {
      // ICMP port unreachable (ECONNREFUSED) ends nothing, and the client's datagrams keep the
      // flow, as docker-proxy's retried write does.
      const TIMEOUT = 1000;
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const targetPort = await reserveUdpPort(V4);
      m = await addUdp(proxy, targetPort, { udpTimeoutMs: TIMEOUT });
      const client = await openUdp({ bag });
      const t0 = Date.now();
      let n = 0;
      let lastSent = t0;
      while (Date.now() - t0 < 3 * TIMEOUT) {
        // Taken before the send: the proxy sees the datagram after this.
        lastSent = Date.now();
        await client.send(Buffer.from(`tick ${n++}`), m.listen.port, V4);
        await sleep(50);
      }
      assert.equal(statsOf(proxy, m).flows.created, 1, 'one flow carried every datagram');
      const st = await waitStats(
        proxy,
        m,
        (s) => s.flows.expired === 1,
        'flows.expired === 1',
        TIMEOUT + 5000,
      );
      const idle = Date.now() - lastSent;
      assert.ok(
        idle >= TIMEOUT - 20,
        `expired ${idle} ms after the last datagram, before udpTimeoutMs (${TIMEOUT})`,
      );
      assert.deepEqual(st.flows, { active: 0, created: 1, expired: 1, evicted: 0 });
      assert.deepEqual(texts(client.received), [], 'nothing came back from a closed port');
    });

    test('proxy.close() with live flows resolves and frees the port', async (t) => {
      const bag = [];
      let own;
      t.after(() => safeClose(own));
      t.after(() => closeAll(bag));
      own = createProxy({ engine });
      const target = await startUdpServer({ bag });
      const m = await addUdp(own, target.port);
      const clients = await Promise.all([0, 1, 2].map(() => openUdp({ bag })));
      for (const [i, client] of clients.entries()) {
        await roundTrip(client, Buffer.from(`client ${i}`), m.listen.port, V4);
      }
      await withTimeout(own.close(), 5000, 'proxy.close() with live UDP flows');
      assert.equal(own.closed, true);
      assert.deepEqual(own.stats().mappings, []);
      const seen = target.received.length;
      await clients[0].send(Buffer.from('after close'), m.listen.port, V4);
      assert.deepEqual(texts(await clients[0].drain(200)), [], 'a reply after close');
      assert.equal(target.received.length, seen, 'the target got nothing after close');
      const rebound = await openUdp({ port: m.listen.port, bag });
      assert.equal(rebound.port, m.listen.port);
    });

    test('stats count datagrams and bytes exactly', async (t) => {
      const EXTRA = 7; // The target answers each datagram with 7 more bytes than it got.
      const bag = [];
      let m;
      t.after(() => safeRemove(proxy, m));
      t.after(() => closeAll(bag));
      const target = await startUdpServer({
        reply: (msg) => Buffer.concat([Buffer.from('reply: '), msg]),
        bag,
      });
      m = await addUdp(proxy, target.port);
      let st = statsOf(proxy, m);
      assert.equal(st.proto, 'udp');
      assert.deepEqual({ ...st.listen }, { host: V4, port: m.listen.port });
      assert.deepEqual({ ...st.target }, { host: V4, port: target.port });
      assert.deepEqual(st.flows, { active: 0, created: 0, expired: 0, evicted: 0 });
      assert.deepEqual(st.datagrams, { toTarget: 0, toClient: 0 });
      assert.deepEqual(st.dropped, {
        total: 0,
        noFlow: 0,
        queueFull: 0,
        refused: 0,
        truncated: 0,
        other: 0,
      });
      assert.deepEqual(st.bytes, { toTarget: 0n, toClient: 0n, spliced: 0n, copied: 0n });

      const sizes = [1, 10, 100, 1000, 1472, 9000, 30000];
      const clients = await Promise.all([0, 1].map(() => openUdp({ bag })));
      let sent = 0;
      for (const [i, size] of sizes.entries()) {
        const payload = randomBytes(size);
        const { msg } = await roundTrip(clients[i % 2], payload, m.listen.port, V4, `reply to ${size} bytes`);
        assert.equal(msg.length, size + EXTRA);
        assert.ok(msg.subarray(EXTRA).equals(payload));
        sent += size;
      }
      const count = sizes.length;
      st = await waitStats(
        proxy,
        m,
        (s) => s.datagrams.toClient === count,
        `datagrams.toClient === ${count}`,
      );
      await sleep(50); // Nothing more may be counted.
      st = statsOf(proxy, m);
      assert.deepEqual(st.flows, { active: 2, created: 2, expired: 0, evicted: 0 });
      assert.deepEqual(st.datagrams, { toTarget: count, toClient: count });
      assert.deepEqual(st.dropped, {
        total: 0,
        noFlow: 0,
        queueFull: 0,
        refused: 0,
        truncated: 0,
        other: 0,
      });
      const toTarget = BigInt(sent);
      const toClient = BigInt(sent + count * EXTRA);
      assert.deepEqual(
        st.bytes,
        { toTarget, toClient, spliced: 0n, copied: toTarget + toClient },
        show(st.bytes),
      );
    });
  });
}
