// One definition per counter: the addon's snapshot fields, the library's list (src/counters.ts),
// the public stats shape and the Prometheus metrics must all carry every counter. A counter
// added in one place and not the others fails here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

import { COUNTERS, checkNativeFields, newCounters } from '../dist/counters.js';
import { shapeStats } from '../dist/stats.js';
import { createMetrics } from '../dist/cli/metrics.js';

const require = createRequire(import.meta.url);

function loadAddon() {
  const override = process.env.PORTSPLICE_ADDON;
  return override ? require(override) : require('node-gyp-build')(new URL('..', import.meta.url).pathname);
}

/** Counters with a distinct value each (1001, 1002, ...), so that each can be found again. */
function distinctCounters() {
  const counters = newCounters();
  COUNTERS.forEach(([name, kind], i) => {
    counters[name] = kind === 'bytes' ? BigInt(1001 + i) : 1001 + i;
  });
  return counters;
}

function leaves(value, out = []) {
  if (typeof value === 'number' || typeof value === 'bigint') out.push(Number(value));
  else if (value && typeof value === 'object') for (const v of Object.values(value)) leaves(v, out);
  return out;
}

const mappingOf = (proto) =>
  Object.freeze({
    id: 7,
    proto,
    listen: { host: '127.0.0.1', port: 1 },
    target: { host: '127.0.0.1', port: 2 },
  });

test("the addon's snapshot fields are 'id' and the library's counters, in order", () => {
  const fields = loadAddon().statsFields;
  assert.deepEqual([...fields], ['id', ...COUNTERS.map(([name]) => name)]);
  assert.doesNotThrow(() => checkNativeFields(fields));
});

test('a drifted field list is refused at load, naming what differs', () => {
  const fields = ['id', ...COUNTERS.map(([name]) => name)];
  assert.throws(() => checkNativeFields(fields.slice(0, -1)), new RegExp(`missing: ${fields.at(-1)}\\b`));
  assert.throws(() => checkNativeFields([...fields, 'newCounter']), /unknown: newCounter/);
  const swapped = [...fields];
  [swapped[1], swapped[2]] = [swapped[2], swapped[1]];
  assert.throws(() => checkNativeFields(swapped), /do not match/);
});

test('every counter is a number or, for bytes, a bigint', () => {
  for (const [name, kind] of COUNTERS) {
    assert.equal(typeof newCounters()[name], kind === 'bytes' ? 'bigint' : 'number', name);
  }
});

for (const proto of ['tcp', 'udp']) {
  const own = COUNTERS.filter(([, , p]) => p === proto || p === 'both');

  test(`${proto} stats carry every ${proto} counter`, () => {
    const counters = distinctCounters();
    const values = leaves(shapeStats(mappingOf(proto), counters));
    for (const [name] of own) {
      assert.ok(values.includes(Number(counters[name])), `${name} is missing from the ${proto} stats`);
    }
  });

  test(`${proto} metrics carry every ${proto} counter`, async () => {
    const counters = distinctCounters();
    const stats = { engine: 'splice', mappings: [shapeStats(mappingOf(proto), counters)] };
    const metrics = createMetrics({ engine: 'splice', stats: () => stats }, 'test');
    const text = await metrics.scrape();
    const values = new Set(
      text
        .split('\n')
        .filter((line) => line.startsWith('portsplice_') && line.includes(`mapping="${proto}/127.0.0.1:1"`))
        .map((line) => Number(line.slice(line.lastIndexOf(' ') + 1))),
    );
    for (const [name] of own) {
      assert.ok(values.has(Number(counters[name])), `${name} has no ${proto} metric`);
    }
  });
}
