// remove(mapping, { drainTimeoutMs }): one mapping drains while the others go on; remove() and
// close() resolve { reset }, the connections that were still open when the drain ended.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  addMapping,
  closeServers,
  connect,
  expectRefused,
  pingEcho,
  safeClose,
  startEchoServer,
  waitClose,
  waitFor,
  withTimeout,
} from './helpers.mjs';

for (const engine of ENGINES) {
  describe(`remove with a drain [${engine}]`, () => {
    it('closes that listener at once, lets its open connection finish, and leaves other mappings alone', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const drained = await addMapping(proxy, echo.port);
        const other = await addMapping(proxy, echo.port);
        const client = await connect(drained.listen.port);
        const bystander = await connect(other.listen.port);
        await pingEcho(client);
        const removing = proxy.remove(drained, { drainTimeoutMs: 5000 });
        // The engine closes the listener as soon as its threads have the command; a connection
        // that reaches the accept queue just before is reset by the kernel when it closes.
        await waitFor(
          async () => {
            try {
              await expectRefused(drained.listen.port, V4, 'the removed listener');
              return true;
            } catch {
              return false;
            }
          },
          { timeout: 2000, what: 'the removed listener to refuse' },
        );
        await pingEcho(client, Buffer.from('during drain\n'));
        assert.ok(
          proxy.stats().mappings.some((m) => m.id === drained.id),
          'listed while it drains',
        );
        await assert.rejects(proxy.remove(drained), { code: 'ERR_UNKNOWN_MAPPING' }, 'not twice');
        client.end();
        await waitClose(client, 3000);
        assert.deepEqual(client.errors, []);
        assert.deepEqual(await withTimeout(removing, 3000, 'remove after the last connection'), { reset: 0 });
        assert.deepEqual(
          proxy.stats().mappings.map((m) => m.id),
          [other.id],
        );
        await pingEcho(bystander);
        bystander.destroy();
      } finally {
        await safeClose(proxy);
        await closeServers(echo);
      }
    });

    it('resets what is still open at the timeout and counts it', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const m = await addMapping(proxy, echo.port);
        const client = await connect(m.listen.port);
        await pingEcho(client);
        assert.deepEqual(await proxy.remove(m, { drainTimeoutMs: 200 }), { reset: 1 });
        const closed = await waitClose(client, 3000);
        assert.equal(closed.error?.code, 'ECONNRESET');

        const n = await addMapping(proxy, echo.port);
        const again = await connect(n.listen.port);
        await pingEcho(again);
        assert.deepEqual(await proxy.close({ drainTimeoutMs: 200 }), { reset: 1 });
        assert.equal((await waitClose(again, 3000)).error?.code, 'ECONNRESET');
      } finally {
        await safeClose(proxy);
        await closeServers(echo);
      }
    });

    it('rejects a bad drain option, naming the field, and keeps the mapping', async () => {
      const echo = await startEchoServer();
      const proxy = createProxy({ engine });
      try {
        const m = await addMapping(proxy, echo.port);
        await assert.rejects(proxy.remove(m, { drainTimeoutMs: -1 }), /drainTimeoutMs/);
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
