// The command's Prometheus endpoint as a scraper sees it: the real CLI with --metrics on
// loopback, forwarding to real echo servers, scraped over HTTP; the exposition text is parsed
// (HELP, TYPE, names, labels, values) rather than matched line by line. Also /healthz in both
// states (503 while draining) and OpenMetrics when the Accept header asks for it.

import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';

import { createProxy } from '../dist/index.js';
import { parseArgs } from '../dist/cli/args.js';
import { UsageError } from '../dist/cli/where.js';
import {
  ENGINES,
  MiB,
  V4,
  closeServers,
  connect,
  exchange,
  freePort,
  show,
  startEchoServer,
  waitFor,
  withTimeout,
} from './helpers.mjs';
import { freeRange, killAll, startCli, startServerRange, stopCli } from './cli-helpers.mjs';

const servers = [];
after(async () => {
  await killAll();
  await closeServers(...servers);
});

async function echoServer() {
  const s = await startEchoServer();
  servers.push(s);
  return s;
}

async function get(port, path, headers = {}) {
  const res = await withTimeout(fetch(`http://${V4}:${port}${path}`, { headers }), 5000, `GET ${path}`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/**
 * Parses the Prometheus text format (and OpenMetrics, which differs in what is parsed here only
 * by `# EOF` and by counter family names without `_total`) into families:
 * name -> { help, type, samples: [{ name, labels, value }] }.
 */
function parseExposition(text) {
  const families = new Map();
  const family = (name) => {
    if (!families.has(name)) families.set(name, { help: undefined, type: undefined, samples: [] });
    return families.get(name);
  };
  let current;
  for (const line of text.split('\n')) {
    if (line === '' || line === '# EOF') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      current = meta[2];
      if (meta[1] === 'HELP') family(current).help = meta[3];
      else family(current).type = meta[3];
      continue;
    }
    assert.ok(!line.startsWith('#'), `an unknown comment line: ${line}`);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `a sample line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[2]) {
      for (const [, k, v] of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    }
    // A sample belongs to the family it was declared under (a counter `x`'s `x_total`).
    assert.ok(current && m[1].startsWith(current), `${m[1]} follows its # TYPE line`);
    family(current).samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  for (const [name, f] of families) {
    assert.ok(f.help, `${name} has HELP`);
    assert.ok(
      ['counter', 'gauge', 'histogram', 'summary', 'untyped', 'info'].includes(f.type),
      `${name}: ${f.type}`,
    );
  }
  return families;
}

/** The samples of `name` whose labels include `labels`. */
function values(families, family, labels = {}) {
  const f = families.get(family);
  assert.ok(f, `the family ${family} is exposed`);
  return f.samples.filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

function value(families, family, labels) {
  const found = values(families, family, labels);
  assert.equal(
    found.length,
    1,
    `one ${family} sample with ${JSON.stringify(labels)}: ${JSON.stringify(found)}`,
  );
  return found[0].value;
}

async function startWithMetrics(args, count) {
  // Port 0: the command prints the port it got, so it cannot collide with a listen port
  // chosen by freePort() just before.
  const { child, ports } = await startCli(['--metrics', `${V4}:0`, ...args], count);
  const [, port] = await child.waitLine(/metrics on http:\/\/.*:(\d+)\/metrics$/);
  const metricsPort = Number(port);
  return { child, ports, metricsPort };
}

describe('/metrics', () => {
  test('a scrape: HELP and TYPE for every family, one stable mapping label, process_* unprefixed', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child, metricsPort } = await startWithMetrics(['-p', `${V4}:${port}:${V4}:${echo.port}`], 1);
    await exchange(port, V4, Buffer.alloc(4000, 7));
    await exchange(port, V4, Buffer.alloc(1000, 7));
    const mapping = `tcp/${V4}:${port}`;
    let res;
    let families;
    await waitFor(
      async () => {
        res = await get(metricsPort, '/metrics');
        families = parseExposition(res.text);
        return value(families, 'portsplice_connections_active', { mapping }) === 0;
      },
      { what: 'both connections closed in the metrics', describe: () => res?.text },
    );
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain; version=0\.0\.4/);

    assert.equal(families.get('portsplice_bytes_total').type, 'counter');
    assert.equal(families.get('portsplice_connections_active').type, 'gauge');
    assert.equal(value(families, 'portsplice_bytes_total', { mapping, direction: 'to_target' }), 5000);
    assert.equal(value(families, 'portsplice_bytes_total', { mapping, direction: 'to_client' }), 5000);
    assert.equal(value(families, 'portsplice_connections_accepted_total', { mapping }), 2);
    for (const reason of ['refused', 'timeout', 'unreachable', 'other'])
      assert.equal(value(families, 'portsplice_connections_failed_total', { mapping, reason }), 0);
    // The data series carry `mapping` (and their own dimension) only; the info metric says what it is.
    for (const s of families.get('portsplice_connections_accepted_total').samples) {
      assert.deepEqual(Object.keys(s.labels), ['mapping']);
    }
    assert.deepEqual(values(families, 'portsplice_mapping_info')[0].labels, {
      mapping,
      proto: 'tcp',
      listen: `${V4}:${port}`,
      target: `${V4}:${echo.port}`,
    });
    assert.equal(value(families, 'portsplice_mappings', { proto: 'tcp' }), 1);

    // What stock dashboards look for, under the standard names.
    const rss = value(families, 'process_resident_memory_bytes', {});
    assert.ok(rss > 10e6 && rss < 2e9, `resident memory ${rss}`);
    assert.ok(value(families, 'process_open_fds', {}) > 3);
    assert.ok(value(families, 'process_max_fds', {}) >= value(families, 'process_open_fds', {}));
    assert.equal(families.get('process_cpu_seconds_total').type, 'counter');
    const start = value(families, 'process_start_time_seconds', {});
    assert.ok(Math.abs(start - Date.now() / 1000) < 120, `start time ${start}`);
    for (const name of families.keys()) {
      assert.match(name, /^(portsplice|process)_/, `${name}: Node.js families only with --metrics-nodejs`);
    }
    assert.equal((await get(metricsPort, '/nope')).status, 404);
    assert.equal((await stopCli(child)).code, 0);

    // The README's table names every family of the scrape, with its type, and no other.
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const table = readme.slice(
      readme.indexOf('| metric '),
      readme.indexOf('\n\n', readme.indexOf('| metric ')),
    );
    const documented = new Map();
    for (const row of table.split('\n').slice(2)) {
      const [names, type] = row
        .split('|')
        .slice(1, 3)
        .map((c) => c.trim());
      for (const name of names.split(', '))
        documented.set(name.replace(/`/g, '').replace(/\{.*\}$/, ''), type);
    }
    assert.ok(documented.size > 20, `the table was found: ${documented.size} rows`);
    const exposed = new Map([...families].map(([name, f]) => [name, f.type]));
    assert.deepEqual(
      [...documented].sort(),
      [...exposed].sort(),
      'README.md "Watching it" table = the families a scrape has',
    );
  });

  test('a config name is the label; it survives a change of port', async () => {
    const echo = await echoServer();
    const names = [];
    for (const port of [await freePort(), await freePort()]) {
      const config = JSON.stringify([
        { name: 'web', listen: { host: V4, port }, target: { host: V4, port: echo.port } },
      ]);
      const file = `/tmp/psm-metrics-${process.pid}-${port}.json`;
      writeFileSync(file, config);
      try {
        const { child, metricsPort } = await startWithMetrics(['--config', file], 1);
        await exchange(port, V4, Buffer.from('hello'));
        const families = parseExposition((await get(metricsPort, '/metrics')).text);
        names.push(values(families, 'portsplice_connections_accepted_total').map((s) => s.labels.mapping));
        assert.equal(value(families, 'portsplice_mapping_info', { mapping: 'web' }), 1);
        assert.equal(values(families, 'portsplice_mapping_info')[0].labels.listen, `${V4}:${port}`);
        assert.equal((await stopCli(child)).code, 0);
      } finally {
        rmSync(file, { force: true });
      }
    }
    assert.deepEqual(names, [['web'], ['web']]);
  });

  test('a -p range is one series set, summed; --metrics-per-port splits it', async () => {
    const targets = await startServerRange(3, () => (socket) => socket.pipe(socket));
    servers.push(targets);
    const targetFirst = targets.first;
    const first = await freeRange(3);
    const spec = `${V4}:${first}-${first + 2}:${V4}:${targetFirst}-${targetFirst + 2}`;
    for (const perPort of [false, true]) {
      const { child, metricsPort } = await startWithMetrics(
        [...(perPort ? ['--metrics-per-port'] : []), '-p', spec],
        3,
      );
      for (let i = 0; i < 3; i++) await exchange(first + i, V4, Buffer.alloc(100 * (i + 1), 1));
      let families;
      await waitFor(
        async () => {
          families = parseExposition((await get(metricsPort, '/metrics')).text);
          return values(families, 'portsplice_connections_active').every((s) => s.value === 0);
        },
        { what: 'connections closed' },
      );
      const accepted = values(families, 'portsplice_connections_accepted_total');
      if (perPort) {
        assert.deepEqual(
          accepted.map((s) => [s.labels.mapping, s.value]),
          [0, 1, 2].map((i) => [`tcp/${V4}:${first + i}`, 1]),
        );
      } else {
        const mapping = `tcp/${V4}:${first}-${first + 2}`;
        assert.deepEqual(
          accepted.map((s) => [s.labels.mapping, s.value]),
          [[mapping, 3]],
        );
        assert.equal(value(families, 'portsplice_bytes_total', { mapping, direction: 'to_target' }), 600);
        assert.deepEqual(values(families, 'portsplice_mapping_info')[0].labels, {
          mapping,
          proto: 'tcp',
          listen: `${V4}:${first}-${first + 2}`,
          target: `${V4}:${targetFirst}-${targetFirst + 2}`,
        });
      }
      assert.equal(value(families, 'portsplice_mappings', { proto: 'tcp' }), 3);
      assert.equal((await stopCli(child)).code, 0);
    }
  });

  test('--metrics-nodejs adds the nodejs_* families', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child, metricsPort } = await startWithMetrics(
      ['--metrics-nodejs', '-p', `${V4}:${port}:${V4}:${echo.port}`],
      1,
    );
    const families = parseExposition((await get(metricsPort, '/metrics')).text);
    assert.ok(value(families, 'nodejs_heap_size_used_bytes', {}) > 0);
    assert.ok(families.has('nodejs_eventloop_lag_seconds'));
    assert.ok(families.has('process_resident_memory_bytes'));
    assert.equal((await stopCli(child)).code, 0);
  });

  test('OpenMetrics when the Accept header asks for it, as Prometheus sends it', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child, metricsPort } = await startWithMetrics(['-p', `${V4}:${port}:${V4}:${echo.port}`], 1);
    await exchange(port, V4, Buffer.from('ping'));
    const accept =
      'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,' +
      'text/plain;version=0.0.4;q=0.5,*/*;q=0.1';
    const om = await get(metricsPort, '/metrics', { accept });
    assert.equal(om.status, 200);
    assert.match(om.type, /^application\/openmetrics-text; version=1\.0\.0/);
    assert.ok(om.text.endsWith('# EOF\n'), 'OpenMetrics ends with # EOF');
    const families = parseExposition(om.text);
    // OpenMetrics names the counter family without _total and its sample with it.
    assert.equal(families.get('portsplice_connections_accepted').type, 'counter');
    assert.equal(
      families.get('portsplice_connections_accepted').samples[0].name,
      'portsplice_connections_accepted_total',
    );
    assert.equal(value(families, 'portsplice_connections_accepted', { mapping: `tcp/${V4}:${port}` }), 1);

    // And a plain scrape afterwards is still the Prometheus text format, with _total families.
    const text = await get(metricsPort, '/metrics', { accept: 'text/plain' });
    assert.match(text.type, /^text\/plain; version=0\.0\.4/);
    assert.ok(!text.text.includes('# EOF'));
    assert.equal(parseExposition(text.text).get('portsplice_connections_accepted_total').type, 'counter');
    const refused = await get(metricsPort, '/metrics', {
      accept: 'application/openmetrics-text;q=0, text/plain',
    });
    assert.match(refused.type, /^text\/plain/);
    assert.equal((await stopCli(child)).code, 0);
  });
});

describe('/healthz', () => {
  test('200 while every mapping listens; 503 with the reason while draining', async () => {
    const echo = await echoServer();
    const port = await freePort();
    const { child, metricsPort } = await startWithMetrics(
      ['--drain-timeout', '5', '-p', `${V4}:${port}:${V4}:${echo.port}`],
      1,
    );
    const ok = await get(metricsPort, '/healthz');
    assert.equal(ok.status, 200);
    assert.match(ok.type, /^text\/plain/);
    assert.equal(ok.text, 'ok: 1 mapping listening\n');

    // An open connection keeps the drain going; meanwhile the endpoint says so.
    const socket = await connect(port);
    child.kill('SIGTERM');
    await child.until(() => /stopped accepting/.test(child.out), 'the drain to start');
    const draining = await get(metricsPort, '/healthz');
    assert.equal(draining.status, 503);
    assert.equal(draining.text, 'stopping (SIGTERM): not accepting connections\n');
    // The metrics stay up during the drain and show the connection it waits for.
    const families = parseExposition((await get(metricsPort, '/metrics')).text);
    assert.equal(value(families, 'portsplice_connections_active', { mapping: `tcp/${V4}:${port}` }), 1);
    const closed = Date.now();
    socket.destroy();
    const exit = await child.waitExit();
    const ms = Date.now() - closed;
    assert.equal(exit.code, 0);
    assert.ok(ms < 5000, `the drain (of up to 10 s) ended when the connection closed (${ms} ms)`);
  });
});

describe('the name option', () => {
  for (const engine of ENGINES) {
    test(`a mapping's name is in its Mapping and its stats; a bad one is refused naming the field (${engine})`, async (t) => {
      const proxy = createProxy({ engine });
      t.after(() => proxy.close());
      const echo = await echoServer();
      const mapping = await proxy.add({
        proto: 'tcp',
        name: 'web.v2/a:b_c-d',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: echo.port },
      });
      assert.equal(mapping.name, 'web.v2/a:b_c-d');
      assert.equal(proxy.stats().mappings[0].name, 'web.v2/a:b_c-d');
      const unnamed = await proxy.add({
        proto: 'tcp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: echo.port },
      });
      assert.ok(!('name' in unnamed) && !('name' in proxy.stats().mappings[1]));
      for (const [name, Kind] of [
        [42, TypeError],
        ['', RangeError],
        ['has space', RangeError],
        ['x'.repeat(65), RangeError],
        ['quote"', RangeError],
      ]) {
        await assert.rejects(
          proxy.add({ proto: 'tcp', name, listen: { host: V4, port: 0 }, target: { host: V4, port: 1 } }),
          (err) => err instanceof Kind && /^name must be/.test(err.message),
          JSON.stringify(name),
        );
      }
    });
  }

  test('the command: a config name is checked, two mappings may not share one; the metrics flags need --metrics', () => {
    const config = (mappings) => () => JSON.stringify(mappings);
    const m = (port, name) => ({ name, listen: { port }, target: { host: V4, port: 80 } });
    assert.equal(parseArgs(['--config', 'a.json'], config([m(1, 'web')])).mappings[0].options.name, 'web');
    assert.throws(
      () => parseArgs(['--config', 'a.json'], config([m(1, 'web'), m(2, 'web')])),
      (err) =>
        err instanceof UsageError &&
        /name "web" is given twice \(a\.json: mappings\[0\] and a\.json: mappings\[1\]\)/.test(err.message),
    );
    assert.throws(
      () => parseArgs(['--metrics-per-port', '-p', '1:127.0.0.1:2']),
      (err) => err instanceof UsageError && err.message === '--metrics-per-port needs --metrics',
    );
    assert.equal(
      parseArgs(['--metrics', ':1', '--metrics-nodejs', '-p', '1:127.0.0.1:2']).metricsNodejs,
      true,
    );
    assert.throws(
      () => parseArgs(['--config', 'a.json'], config([m(1, 'no spaces')])),
      (err) => err instanceof UsageError && /^a\.json: mappings\[0\]\.name must be 1 to 64/.test(err.message),
    );
  });
});

describe('pipe counters (splice engine)', () => {
  test('pipes in use while a target does not read; bursts beyond maxPipes are counted as fallbacks', async (t) => {
    const proxy = createProxy({ engine: 'splice', threads: 1, pipeSize: 4096, maxPipes: 1 });
    t.after(() => proxy.close());
    // A target that reads nothing until told to: the proxy's pipe toward it stays full.
    const held = [];
    let releasing = false;
    const target = net.createServer((socket) => {
      // One accepted after the release below would hold its half-closed session open.
      if (releasing) return void socket.destroy();
      socket.pause();
      held.push(socket);
    });
    await new Promise((resolve) => target.listen(0, V4, resolve));
    t.after(() => {
      for (const s of held) s.destroy();
      return new Promise((resolve) => target.close(resolve));
    });
    const mapping = await proxy.add({
      proto: 'tcp',
      listen: { host: V4, port: 0 },
      target: { host: V4, port: target.address().port },
    });
    const stats = () => proxy.stats().mappings.find((m) => m.id === mapping.id);
    assert.deepEqual(stats().pipes, { inUse: 0, fallbacks: 0 });

    const a = await connect(mapping.listen.port);
    t.after(() => a.destroy());
    a.write(Buffer.alloc(8 * MiB, 1));
    await waitFor(() => stats().pipes.inUse === 1, { what: 'one pipe held', describe: () => show(stats()) });
    const b = await connect(mapping.listen.port);
    t.after(() => b.destroy());
    b.write(Buffer.alloc(64 * 1024, 2));
    await waitFor(() => stats().pipes.fallbacks > 0 && stats().bytes.copied > 0n, {
      what: 'the second connection copied',
      describe: () => show(stats()),
    });
    // Never more than maxPipes (a pipe is given back whenever it runs empty, so 0 is possible).
    assert.ok(stats().pipes.inUse <= 1, `maxPipes: 1 holds (${stats().pipes.inUse} in use)`);

    // Once the connections are gone, their pipes are given back.
    a.destroy();
    b.destroy();
    releasing = true;
    for (const s of held) s.destroy();
    await waitFor(() => stats().connections.active === 0 && stats().pipes.inUse === 0, {
      what: 'pipes released',
      describe: () => show(stats()),
    });
  });

  test('the stream engine has no pipes', async (t) => {
    const proxy = createProxy({ engine: 'stream' });
    t.after(() => proxy.close());
    const echo = await echoServer();
    const mapping = await proxy.add({
      proto: 'tcp',
      listen: { host: V4, port: 0 },
      target: { host: V4, port: echo.port },
    });
    await exchange(mapping.listen.port, V4, Buffer.alloc(100_000, 3));
    assert.deepEqual(proxy.stats().mappings[0].pipes, { inUse: 0, fallbacks: 0 });
  });
});
