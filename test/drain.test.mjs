// @test-tag timing: drain deadlines
// close({ drainTimeoutMs }): listeners close at once, open connections get that long to
// finish on their own, and whatever is still open afterwards is reset.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  addMapping,
  closeServers,
  connect,
  expectRefusedSoon,
  pingEcho,
  safeClose,
  startEchoServer,
  waitClose,
  withTimeout,
} from './helpers.mjs';

for (const engine of ENGINES) {
  describe(`drain on close [${engine}]`, () => {
    it('refuses new connections at once and lets an open one finish', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const m = await addMapping(proxy, echo.port);
        const client = await connect(m.listen.port);
        await pingEcho(client, Buffer.from('before\n'));
        const started = Date.now();
        const closing = proxy.close({ drainTimeoutMs: 5000 });
        await expectRefusedSoon(m.listen.port, V4, 'listener after drain started');
        // The open connection still forwards both ways while the proxy drains.
        const echoed = await pingEcho(client, Buffer.from('during drain\n'));
        assert.equal(echoed.toString(), 'during drain\n');
        client.end();
        await waitClose(client, 3000, 'client close after end');
        assert.deepEqual(client.errors, [], 'a drained connection ends cleanly, not with a reset');
        await withTimeout(closing, 3000, 'close after the last connection ended');
        assert.ok(
          Date.now() - started < 4000,
          'close resolved once the connection ended, before the timeout',
        );
      } finally {
        await safeClose(proxy);
        await closeServers(echo);
      }
    });

    it('resets connections still open when the drain timeout passes', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const m = await addMapping(proxy, echo.port);
        const client = await connect(m.listen.port);
        await pingEcho(client);
        const started = Date.now();
        await withTimeout(proxy.close({ drainTimeoutMs: 300 }), 3000, 'close with a drain timeout');
        const elapsed = Date.now() - started;
        assert.ok(elapsed >= 250, `close waited for the drain timeout (${elapsed} ms)`);
        const { error } = await waitClose(client, 3000, 'idle client closed after the drain timeout');
        assert.equal(error?.code, 'ECONNRESET', 'a connection cut by the timeout is reset');
      } finally {
        await safeClose(proxy);
        await closeServers(echo);
      }
    });

    it('rejects bad drain options without closing anything', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const m = await addMapping(proxy, echo.port);
        await assert.rejects(proxy.close({ drainTimeoutMs: -1 }), RangeError);
        await assert.rejects(proxy.close({ drainTimeoutMs: '5' }), /drainTimeoutMs/);
        await assert.rejects(proxy.close({ drain: 5 }), /options\.drain/);
        assert.equal(proxy.closed, false);
        const client = await connect(m.listen.port);
        await pingEcho(client);
        client.destroy();
      } finally {
        await safeClose(proxy);
        await closeServers(echo);
      }
    });
  });
}
