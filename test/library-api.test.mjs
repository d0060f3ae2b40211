// The library for people who embed it, both engines, over real sockets: Symbol.asyncDispose
// (and `await using` where Node parses it), stats(mapping) by object or id, stats that
// JSON.stringify carries with every digit, mappings(), the PortspliceProxy type and its
// deprecated Proxy alias, and options of the other protocol refused with the reason.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createProxy, ErrorCodes } from '../dist/index.js';
import {
  ENGINES,
  V4,
  DIST_URL,
  startEchoServer,
  addMapping,
  exchange,
  randomPayload,
  expectRefused,
  waitIdle,
  safeClose,
  closeServers,
} from './helpers.mjs';

/** Whether this Node parses `await using` (V8 12.x+); Node 20 does not. */
function parsesAwaitUsing() {
  try {
    new Function('return async () => { await using x = null; }');
    return true;
  } catch {
    return false;
  }
}

for (const engine of ENGINES) {
  describe(`library API [${engine}]`, () => {
    test('Symbol.asyncDispose closes the proxy and its listeners', async (t) => {
      const echo = await startEchoServer();
      t.after(() => closeServers(echo));
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const m = await addMapping(proxy, echo.port);
      assert.equal(typeof proxy[Symbol.asyncDispose], 'function');
      await exchange(m.listen.port, V4, randomPayload(1000));
      await proxy[Symbol.asyncDispose]();
      assert.equal(proxy.closed, true);
      await expectRefused(m.listen.port);
      await proxy[Symbol.asyncDispose](); // A second dispose is harmless, as close() is.
    });

    test(
      '`await using` disposes at the end of the block',
      { skip: parsesAwaitUsing() ? false : `Node ${process.version} does not parse \`await using\`` },
      async () => {
        const run = new Function(
          'createProxy',
          'engine',
          `return (async () => {
            let seen;
            {
              await using proxy = createProxy({ engine });
              seen = proxy;
              await proxy.add({ proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: 9 } });
            }
            return seen;
          })();`,
        );
        const proxy = await run(createProxy, engine);
        assert.equal(proxy.closed, true);
      },
    );

    test('stats(mapping) by object and by id; unknown mappings are ERR_UNKNOWN_MAPPING', async (t) => {
      const echo = await startEchoServer();
      t.after(() => closeServers(echo));
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const a = await addMapping(proxy, echo.port);
      const b = await addMapping(proxy, echo.port);
      await exchange(a.listen.port, V4, randomPayload(3000));
      await waitIdle(proxy, a);
      const byObject = proxy.stats(a);
      assert.equal(byObject.id, a.id);
      assert.equal(byObject.proto, 'tcp');
      assert.equal(byObject.connections.accepted, 1);
      assert.equal(byObject.bytes.toTarget, 3000n);
      assert.deepEqual(proxy.stats(a.id), byObject);
      assert.equal(proxy.stats(b).connections.accepted, 0, 'the other mapping is its own');
      assert.deepEqual(
        proxy.stats().mappings.find((s) => s.id === a.id),
        byObject,
        'the same as in the whole snapshot',
      );
      for (const unknown of [9999, { id: 9999 }, '1', null]) {
        assert.throws(() => proxy.stats(unknown), { code: ErrorCodes.UNKNOWN_MAPPING });
      }
      await proxy.remove(b);
      assert.throws(() => proxy.stats(b), {
        code: 'ERR_UNKNOWN_MAPPING',
        message: /mapping \d+ is not active/,
      });
    });

    test('JSON.stringify(stats()) carries the bigints as decimal strings', async (t) => {
      const echo = await startEchoServer();
      t.after(() => closeServers(echo));
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const m = await addMapping(proxy, echo.port);
      const u = await proxy.add({
        proto: 'udp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: echo.port },
      });
      await exchange(m.listen.port, V4, randomPayload(12345));
      await waitIdle(proxy, m);
      const stats = proxy.stats();
      const parsed = JSON.parse(JSON.stringify(stats));
      assert.equal(parsed.engine, engine);
      assert.equal(parsed.mappings.length, 2);
      const tcp = parsed.mappings.find((s) => s.id === m.id);
      assert.equal(tcp.bytes.toTarget, '12345');
      assert.equal(tcp.bytes.toClient, '12345');
      assert.equal(tcp.bytes.spliced, String(stats.mappings.find((s) => s.id === m.id).bytes.spliced));
      assert.equal(tcp.connections.accepted, 1, 'numbers stay numbers');
      assert.equal(parsed.mappings.find((s) => s.id === u.id).bytes.toTarget, '0');
      // One mapping's stats too, and the toJSON is not an own enumerable field.
      assert.equal(
        JSON.parse(JSON.stringify(proxy.stats(m))).bytes.copied,
        String(proxy.stats(m).bytes.copied),
      );
      assert.ok(!Object.keys(stats).includes('toJSON'));
      assert.ok(!Object.keys(proxy.stats(m)).includes('toJSON'));
      // Past 2^53 a number would lose digits; the string does not.
      const big = { ...stats.mappings[0], bytes: { ...stats.mappings[0].bytes, toTarget: 2n ** 64n - 1n } };
      assert.equal(
        JSON.parse(JSON.stringify(proxy.stats(m).toJSON.call(big))).bytes.toTarget,
        '18446744073709551615',
      );
    });

    test('mappings() lists the mappings listening, in order, not those removed or being removed', async (t) => {
      const echo = await startEchoServer();
      t.after(() => closeServers(echo));
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      assert.deepEqual(proxy.mappings(), []);
      const a = await addMapping(proxy, echo.port);
      const b = await addMapping(proxy, echo.port);
      const c = await addMapping(proxy, echo.port);
      assert.deepEqual(proxy.mappings(), [a, b, c]);
      assert.ok(Object.isFrozen(proxy.mappings()[0]));
      await proxy.remove(b);
      assert.deepEqual(proxy.mappings(), [a, c]);
      // A mapping draining (remove with a timeout, an open connection) is no longer listed.
      const { connect } = await import('./helpers.mjs');
      const open = await connect(c.listen.port);
      await waitIdle(proxy, c).catch(() => {});
      const removing = proxy.remove(c, { drainTimeoutMs: 2000 });
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(proxy.mappings(), [a]);
      open.destroy();
      await removing;
      await proxy.close();
      assert.deepEqual(proxy.mappings(), []);
    });

    test('options of the other protocol are refused with the reason', async (t) => {
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const base = (proto) => ({ proto, listen: { host: V4, port: 0 }, target: { host: V4, port: 9 } });
      const cases = [
        ['tcp', { udpTimeoutMs: 1000 }, /udpTimeoutMs applies to UDP mappings only, not to proto 'tcp'/],
        ['tcp', { udpMaxFlows: 10 }, /udpMaxFlows applies to UDP mappings only, not to proto 'tcp'/],
        [
          'udp',
          { backlog: 10 },
          /backlog applies to TCP mappings only, not to proto 'udp' \(a UDP socket has no accept queue\)/,
        ],
        [
          'udp',
          { connectTimeoutMs: 10 },
          /connectTimeoutMs applies to TCP mappings only, not to proto 'udp'/,
        ],
        ['udp', { keepAlive: false }, /keepAlive applies to TCP mappings only/],
      ];
      for (const [proto, extra, message] of cases) {
        await assert.rejects(proxy.add({ ...base(proto), ...extra }), {
          name: 'TypeError',
          code: 'ERR_INVALID_ARG_VALUE',
          message,
        });
      }
      assert.deepEqual(proxy.mappings(), [], 'nothing was opened');
      // Each is taken on its own protocol.
      await proxy.add({ ...base('udp'), udpTimeoutMs: 1000, udpMaxFlows: 10 });
      await proxy.add({ ...base('tcp'), backlog: 10, connectTimeoutMs: 10, keepAlive: false });
      assert.equal(proxy.mappings().length, 2);
    });
  });
}

describe('types', () => {
  test(
    'PortspliceProxy is the type createProxy returns; Proxy is its deprecated alias',
    { timeout: 60000 },
    () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'psa-types-'));
      try {
        const dist = fileURLToPath(DIST_URL);
        writeFileSync(
          path.join(dir, 'use.ts'),
          `import { createProxy } from ${JSON.stringify(dist)};
import type { PortspliceProxy, Proxy, MappingStats, EventBatch } from ${JSON.stringify(dist)};
const proxy: PortspliceProxy = createProxy();
const old: Proxy = proxy;
const one: (m: number) => MappingStats = (m) => proxy.stats(m);
proxy.on('events', (batch: EventBatch) => batch.events.forEach((e) => e.type === 'targetFailure' && e.reason));
// The global Proxy is not shadowed here.
const p = new globalThis.Proxy({}, {});
void [old, one, p, proxy[Symbol.asyncDispose]];
`,
        );
        const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
        execFileSync(
          process.execPath,
          [
            tsc,
            ...['--noEmit', '--strict', '--module', 'nodenext', '--target', 'es2022', '--skipLibCheck'],
            ...[
              '--typeRoots',
              fileURLToPath(new URL('../node_modules/@types', import.meta.url)),
              '--types',
              'node',
            ],
            path.join(dir, 'use.ts'),
          ],
          { cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8' },
        );
      } catch (error) {
        assert.fail(`tsc: ${error.stdout ?? error.message}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
