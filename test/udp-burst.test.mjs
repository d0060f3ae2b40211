// Bursts of equal-size datagrams: the splice engine sends runs of them as one UDP GSO
// message, which the kernel cuts back into datagrams. Each must arrive whole, separately
// and in order, both ways.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createProxy } from '../dist/index.js';
import { ENGINES, V4, safeClose, waitFor } from './helpers.mjs';
import { closeAll, openUdp, startUdpServer } from './udp-helpers.mjs';

/** `count` datagrams of `size` bytes, each filled with its own index, and a short last one. */
function burst(count, size) {
  const datagrams = [];
  for (let i = 0; i < count; i++) datagrams.push(Buffer.alloc(size, i % 251));
  datagrams.push(Buffer.alloc(Math.floor(size / 3), 0xee));
  return datagrams;
}

for (const engine of ENGINES) {
  describe(`udp bursts [${engine}]`, () => {
    for (const size of [1, 512, 1400]) {
      test(`40 datagrams of ${size} bytes and a shorter one arrive whole and in order`, async (t) => {
        const bag = [];
        const proxy = createProxy({ engine });
        t.after(() => safeClose(proxy));
        t.after(() => closeAll(bag));
        const target = await startUdpServer({ bag });
        const m = await proxy.add({
          proto: 'udp',
          listen: { host: V4, port: 0 },
          target: { host: V4, port: target.port },
        });
        const client = await openUdp({ bag });
        // 40 of them fit the default socket buffers, so loss cannot excuse a missing one.
        const sent = burst(40, size);
        // Sent back to back, so that the proxy finds many in its socket at once.
        await Promise.all(sent.map((d) => client.send(d, m.listen.port, V4)));
        const what = `${sent.length} datagrams at the target and back at the client`;
        await waitFor(() => target.received.length >= sent.length && client.received.length >= sent.length, {
          timeout: 5000,
          what,
          describe: () => `target ${target.received.length}, client ${client.received.length}`,
        });
        assert.deepEqual(
          target.received.map((e) => e.msg),
          sent,
          'the target got each datagram separately, whole and in order',
        );
        assert.deepEqual(
          client.received.map((e) => e.msg),
          sent,
          'the echoes came back separately, whole and in order',
        );
        const [st] = proxy.stats().mappings;
        assert.deepEqual(st.datagrams, { toTarget: sent.length, toClient: sent.length });
        const bytes = BigInt(sent.reduce((n, d) => n + d.length, 0));
        assert.equal(st.bytes.toTarget, bytes);
        assert.equal(st.bytes.toClient, bytes);
      });
    }
  });
}
