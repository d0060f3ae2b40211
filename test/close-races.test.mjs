// Calls that race close(): an add() whose bind is in flight when close() begins, a remove()
// after close(), close() twice. Each must settle with ERR_PROXY_CLOSED or succeed, never with
// an engine error, and leave no listener behind. Also the exported error codes and guard.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { createProxy, ErrorCodes, isPortspliceError } from '../dist/index.js';
import {
  ENGINES,
  V4,
  connect,
  expectRefused,
  freePort,
  mappingOptions,
  safeClose,
  startEchoServer,
  withTimeout,
  pingEcho,
} from './helpers.mjs';

// Ways to let the add() get into the engine before close() is called: not at all, one
// microtask turn, one macrotask turn (enough for the splice engine's bind to be sent and
// its completion to be queued behind close's).
const GAPS = {
  none: async () => {},
  nextTick: () => new Promise((resolve) => process.nextTick(resolve)),
  setImmediate: () => new Promise((resolve) => setImmediate(resolve)),
};

/** The add settled as fulfilled or with ERR_PROXY_CLOSED, and nothing listens on `port`. */
async function assertSettledCleanly(result, port) {
  if (result.status === 'rejected') {
    assert.ok(isPortspliceError(result.reason), `not a library error: ${result.reason}`);
    assert.equal(result.reason.code, ErrorCodes.PROXY_CLOSED, result.reason.message);
  }
  await expectRefused(port, V4, `the in-flight mapping's port ${port} after close`);
}

for (const engine of ENGINES) {
  describe(`${engine}: calls racing close()`, () => {
    for (const [name, gap] of Object.entries(GAPS)) {
      test(`add() then close() after ${name}: ERR_PROXY_CLOSED or added, and no listener left`, async (t) => {
        const echo = await startEchoServer();
        t.after(() => echo.close());
        const port = await freePort();
        const proxy = createProxy({ engine });
        t.after(() => safeClose(proxy));
        const adding = proxy.add(mappingOptions(echo.port, { listenPort: port }));
        await gap();
        const [added, closed] = await withTimeout(
          Promise.allSettled([adding, proxy.close()]),
          10000,
          'add and close',
        );
        assert.equal(closed.status, 'fulfilled', String(closed.reason));
        await assertSettledCleanly(added, port);
      });
    }

    test('add() in flight while close() drains: rejected, and its port never accepts during the drain', async (t) => {
      const echo = await startEchoServer();
      t.after(() => echo.close());
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      // A connection that stays open keeps the drain waiting.
      const busy = await proxy.add(mappingOptions(echo.port));
      const client = await connect(busy.listen.port);
      t.after(() => client.destroy());
      await pingEcho(client);

      const port = await freePort();
      const adding = proxy.add(mappingOptions(echo.port, { listenPort: port }));
      await GAPS.setImmediate();
      const closing = proxy.close({ drainTimeoutMs: 1500 });
      const added = await withTimeout(Promise.allSettled([adding]), 5000, 'add during drain');
      await assertSettledCleanly(added[0], port);
      // Still draining: the open connection works, the new port does not.
      await pingEcho(client);
      await expectRefused(port, V4, 'the in-flight mapping during the drain');
      await withTimeout(closing, 10000, 'close with drain');
    });

    test('remove() after close() rejects with ERR_PROXY_CLOSED; close() twice is one close', async (t) => {
      const echo = await startEchoServer();
      t.after(() => echo.close());
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      const mapping = await proxy.add(mappingOptions(echo.port));
      const first = proxy.close({ drainTimeoutMs: 200 });
      await assert.rejects(proxy.remove(mapping), (error) => error.code === ErrorCodes.PROXY_CLOSED);
      assert.equal(proxy.close(), first);
      await withTimeout(first, 10000, 'close');
      await expectRefused(mapping.listen.port);
      await assert.rejects(
        proxy.add(mappingOptions(echo.port)),
        (error) => error.code === 'ERR_PROXY_CLOSED',
      );
    });

    test('a bind failure is a PortspliceError with the system fields', async (t) => {
      const echo = await startEchoServer();
      t.after(() => echo.close());
      const proxy = createProxy({ engine });
      t.after(() => safeClose(proxy));
      await assert.rejects(proxy.add(mappingOptions(echo.port, { listenPort: echo.port })), (error) => {
        assert.ok(isPortspliceError(error));
        assert.equal(error.code, 'EADDRINUSE');
        assert.equal(error.port, echo.port);
        assert.equal(typeof error.syscall, 'string');
        return true;
      });
      assert.equal(isPortspliceError(new Error('plain')), false);
      assert.equal(isPortspliceError({ code: 'EADDRINUSE' }), false);
    });
  });
}

test('an error found later on an engine thread has code, errno, syscall and the address', async () => {
  const { engineError } = await import('../dist/splice-engine.js');
  const error = engineError(-12, { command: 'add', address: '127.0.0.1', port: 8080 });
  assert.ok(isPortspliceError(error));
  assert.equal(error.code, 'ENOMEM');
  assert.equal(error.errno, -12);
  assert.equal(error.syscall, 'add');
  assert.equal(error.address, '127.0.0.1');
  assert.equal(error.port, 8080);
  assert.equal(error.message, 'add ENOMEM 127.0.0.1:8080');
  const bare = engineError(-2, { command: 'remove' });
  assert.equal(bare.code, 'ENOENT');
  assert.equal('address' in bare, false);
  assert.equal(engineError(-99999, { command: 'remove' }).code, 'UNKNOWN');
});
