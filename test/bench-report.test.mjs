// The suite's report from the committed results (bench/results/latest.json): the chart shows
// each figure's spread over the rounds, memory and descriptors per connection, marks
// portsplice's methods, and says when a run was short or the machine busy.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { analyse, chartSpec, markdown, renderSvg, runCaveats } from '../bench/lib/report.mjs';

const latest = () =>
  JSON.parse(readFileSync(new URL('../bench/results/latest.json', import.meta.url), 'utf8'));

test('the chart: medians with the range over the rounds, memory and fds per connection', async () => {
  const results = latest();
  const spec = chartSpec(results, analyse(results));
  const values = spec.data.values;
  const splice = results.places[0].methods.find((m) => m.id === 'splice');
  const rounds = splice.results.bulk1.roundFigures;
  const bulk = values.find(
    (v) =>
      v.metric.startsWith('Bulk TCP, 1 stream') && v.method === 'splice' && v.place === results.places[0].id,
  );
  assert.equal(bulk.lo, Math.min(...rounds));
  assert.equal(bulk.hi, Math.max(...rounds));
  assert.ok(bulk.lo <= bulk.value && bulk.value <= bulk.hi);
  assert.match(bulk.label, /^\d+\.\d \(\d+\.\d–\d+\.\d\)$/);
  // A figure derived from several (CPU per GB) has no range to draw.
  const cpu = values.find((v) => v.metric.startsWith('Proxy CPU') && v.method === 'splice');
  assert.equal(cpu.lo, cpu.hi);

  const memory = results.memory.methods.find((m) => m.id === 'splice');
  const kb = values.find((v) => v.metric.startsWith('Memory per open connection') && v.method === 'splice');
  assert.equal(kb.value, memory.perConnKb);
  const fds = values.find(
    (v) => v.metric.startsWith('Descriptors per open connection') && v.method === 'docker-proxy',
  );
  assert.equal(fds.value, results.memory.methods.find((m) => m.id === 'docker-proxy').fdsPerConn);

  const svg = await renderSvg(spec);
  for (const method of ['splice', 'drop-in', 'stream']) {
    assert.match(svg, new RegExp(`font-weight="bold"[^>]*>${method}<`), `${method} in bold`);
  }
  assert.match(svg, /font-weight="normal"[^>]*>docker-proxy</);
  assert.match(svg, /Load average [\d.]+ at the start, [\d.]+ at the end/);
});

test('short runs and busy machines are called out, in the chart and the report', async () => {
  const results = latest();
  assert.deepEqual(
    runCaveats({
      ...results,
      machine: { ...results.machine, loadAverage: [0.1, 0, 0], loadAverageAtEnd: [1, 0, 0] },
    }),
    [],
  );
  const quick = {
    ...results,
    mode: 'quick',
    config: { ...results.config, rounds: 1, wrkSeconds: 1 },
    machine: { ...results.machine, nproc: 2, loadAverage: [1.5, 1, 1], loadAverageAtEnd: [5, 1, 1] },
  };
  assert.deepEqual(runCaveats(quick), [
    'short run (quick, 1 round of 1 s): figures are indicative only',
    'machine busy at the start (load 1.5 on 2 CPUs)',
    'machine busy at the end (load 5 on 2 CPUs)',
  ]);
  const analysis = analyse(quick);
  assert.match(await renderSvg(chartSpec(quick, analysis)), /Caution: short run \(quick/);
  assert.match(markdown(quick, analysis), /^\*\*Caution:\*\* short run/m);
});
