// The raw addon's request ids: 0 is the core's "nobody waits" id and 2^64-1 its owner's
// stop, so a request with either (or one that is not a whole number) is refused at once
// with a RangeError instead of completing never or closing the proxy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadBinding } from '../dist/binding.js';
import { V4 } from './helpers.mjs';

// The addon the library itself loads (a prebuild, build/Release or PORTSPLICE_ADDON).
const binding = loadBinding();

function nativeProxy(t) {
  const completions = [];
  const proxy = new binding.NativeProxy(1, (request, errno) => completions.push([request, errno]));
  t.after(() => proxy.close());
  return { proxy, completions };
}

const spec = {
  proto: 'tcp',
  listenHost: V4,
  listenPort: 0,
  targetHost: V4,
  targetPort: 9,
  backlog: 16,
  connectTimeoutMs: 1000,
  ipv6Only: false,
  udpTimeoutMs: 1000,
  udpMaxFlows: 16,
  keepAlive: false,
  maxConnections: 0,
  idleTimeoutMs: 0,
};

test('request ids outside 1..2^53 are refused by add, stopListening and remove', (t) => {
  const { proxy } = nativeProxy(t);
  for (const bad of [0, -1, 1.5, 2 ** 53 + 2, 2 ** 64, NaN]) {
    assert.throws(() => proxy.add(bad, spec), RangeError, `add(${bad})`);
    assert.throws(() => proxy.stopListening(bad, 1), RangeError, `stopListening(${bad})`);
    assert.throws(() => proxy.remove(bad, 1), RangeError, `remove(${bad})`);
  }
  assert.deepEqual(proxy.stats().length, 0, 'nothing was added');
});

test('ids 1 and 2^53 complete with themselves', async (t) => {
  const { proxy, completions } = nativeProxy(t);
  const { id } = proxy.add(1, spec);
  proxy.remove(2 ** 53, id);
  const end = Date.now() + 5000;
  while (completions.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(completions, [
    [1, 0],
    [2 ** 53, 0],
  ]);
});
