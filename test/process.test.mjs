// @test-tag slow: about 20 s
// The proxy inside worker threads and child processes: loading, teardown, ref/unref.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';

import { createProxy } from '../dist/index.js';
import {
  ENGINES,
  V4,
  MiB,
  DIST_URL,
  sha256,
  randomPayload,
  sleep,
  withTimeout,
  waitFor,
  startEchoServer,
  connect,
  exchange,
  expectRefused,
  waitPeerClosed,
  pingEcho,
  addMapping,
  waitIdle,
  safeRemove,
  safeClose,
  closeServers,
} from './helpers.mjs';

// ---------------------------------------------------------------------------------------------
// Worker helpers
// ---------------------------------------------------------------------------------------------

/** CommonJS worker body (eval: true); it imports the ESM library dynamically. */
const WORKER_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { createProxy } = await import(workerData.dist);
  const proxy = createProxy({ engine: workerData.engine, threads: 1 });
  const m = await proxy.add({
    proto: 'tcp',
    listen: { host: '127.0.0.1', port: 0 },
    target: { host: '127.0.0.1', port: workerData.target },
  });
  parentPort.on('message', async (msg) => {
    try {
      if (msg === 'stats') {
        const s = proxy.stats().mappings.find((x) => x.id === m.id);
        parentPort.postMessage({
          type: 'stats',
          accepted: s.connections.accepted,
          active: s.connections.active,
          toTarget: String(s.bytes.toTarget),
          toClient: String(s.bytes.toClient),
        });
      } else if (msg === 'close') {
        await proxy.close();
        parentPort.postMessage({ type: 'closed' });
        parentPort.close(); // nothing else keeps this thread alive: it must exit on its own
      } else if (msg === 'exit') {
        process.exit(0); // ends only this worker thread, with the proxy still open
      }
    } catch (err) {
      parentPort.postMessage({ type: 'error', message: String((err && err.stack) || err) });
    }
  });
  parentPort.postMessage({ type: 'ready', port: m.listen.port });
})().catch((err) => {
  parentPort.postMessage({ type: 'error', message: String((err && err.stack) || err) });
});
`;

/** Start a worker running WORKER_CODE; returns { worker, next(type), exited }. */
function startProxyWorker(engine, targetPort) {
  const worker = new Worker(WORKER_CODE, {
    eval: true,
    workerData: { dist: DIST_URL, engine, target: targetPort },
  });
  const inbox = [];
  const waiters = [];
  let failure;
  const deliver = () => {
    for (let i = 0; i < waiters.length;) {
      const w = waiters[i];
      const idx = inbox.findIndex((msg) => msg.type === w.type);
      if (idx >= 0) {
        w.resolve(inbox.splice(idx, 1)[0]);
        waiters.splice(i, 1);
      } else if (failure) {
        w.reject(failure);
        waiters.splice(i, 1);
      } else i++;
    }
  };
  worker.on('message', (msg) => {
    if (msg.type === 'error') failure = new Error(`worker error: ${msg.message}`);
    inbox.push(msg);
    deliver();
  });
  worker.on('error', (err) => {
    failure = err;
    deliver();
  });
  const exited = new Promise((resolve) => worker.on('exit', (code) => resolve(code)));
  exited.then((code) => {
    failure ??= new Error(`worker exited with code ${code}`);
    deliver();
  });
  return {
    worker,
    exited,
    next(type, timeout = 10000) {
      return withTimeout(
        new Promise((resolve, reject) => {
          waiters.push({ type, resolve, reject });
          deliver();
        }),
        timeout,
        `worker message "${type}"`,
      );
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Child process helpers
// ---------------------------------------------------------------------------------------------

function childScript(engine, targetPort, tail) {
  return `
import { createProxy } from ${JSON.stringify(DIST_URL)};
const proxy = createProxy({ engine: ${JSON.stringify(engine)} });
const m = await proxy.add({
  proto: 'tcp',
  listen: { host: '127.0.0.1', port: 0 },
  target: { host: '127.0.0.1', port: ${targetPort} },
});
${tail}
console.log('READY ' + m.listen.port);
`;
}

/** Spawn `node --input-type=module -e script`; returns { child, exited, ready() }. */
function spawnChild(script) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    exited,
    get stderr() {
      return stderr;
    },
    async ready(timeout = 10000) {
      const found = await waitFor(
        () =>
          /READY (\d+)/.exec(stdout) ??
          (child.exitCode !== null || child.signalCode !== null ? 'exited' : null),
        {
          timeout,
          what: 'child prints READY',
          describe: () => `stdout=${JSON.stringify(stdout)} stderr=${JSON.stringify(stderr)}`,
        },
      );
      if (found === 'exited') {
        throw new Error(`child exited (code ${child.exitCode}) before READY; stderr: ${stderr}`);
      }
      return Number(found[1]);
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

for (const engine of ENGINES) {
  describe(`worker threads [${engine}]`, () => {
    let echo;
    let proxy; // the main thread's own proxy

    before(async () => {
      echo = await startEchoServer();
      proxy = createProxy({ engine, threads: 1 });
    });

    after(async () => {
      await safeClose(proxy);
      await closeServers(echo);
    });

    test(
      'a proxy inside a worker forwards, closes, and the worker exits on its own',
      { timeout: 30000 },
      async (t) => {
        const w = startProxyWorker(engine, echo.port);
        t.after(async () => {
          await withTimeout(w.worker.terminate(), 5000, 'terminate').catch(() => {});
        });
        const { port } = await w.next('ready');
        const payload = randomPayload(1 * MiB + 9);
        const got = await exchange(port, V4, payload);
        assert.equal(got.sha256, sha256(payload), 'forwarded byte-exact by the worker proxy');
        await waitFor(
          async () => {
            w.worker.postMessage('stats');
            const s = await w.next('stats');
            return s.active === 0 ? s : null;
          },
          { timeout: 5000, what: 'worker proxy idle' },
        ).then((s) => {
          assert.equal(s.accepted, 1);
          assert.equal(s.toTarget, String(payload.length));
          assert.equal(s.toClient, String(payload.length));
        });
        w.worker.postMessage('close');
        await w.next('closed', 5000);
        const code = await withTimeout(
          w.exited,
          5000,
          'worker exits after proxy.close() (nothing may keep it alive)',
        );
        assert.equal(code, 0);
        await expectRefused(port, V4, 'worker proxy port after close');
      },
    );

    test(
      'a worker that exits without closing its proxy leaves the main thread healthy',
      { timeout: 30000 },
      async (t) => {
        const mine = await addMapping(proxy, echo.port);
        const w = startProxyWorker(engine, echo.port);
        let live;
        t.after(async () => {
          live?.destroy();
          await withTimeout(w.worker.terminate(), 5000, 'terminate').catch(() => {});
          await safeRemove(proxy, mine);
        });
        const { port } = await w.next('ready');
        live = await connect(port);
        await pingEcho(live); // a connection is open through the worker's proxy when it dies
        w.worker.postMessage('exit');
        const code = await withTimeout(w.exited, 5000, 'worker exit with a live proxy');
        assert.equal(code, 0);

        // The main thread and its own proxy carry on.
        const payload = randomPayload(4 * MiB + 1);
        const got = await exchange(mine.listen.port, V4, payload, { timeout: 15000 });
        assert.equal(got.sha256, sha256(payload), 'main proxy still forwards byte-exact');
        const st = await waitIdle(proxy, mine);
        assert.equal(st.connections.accepted, 1);
        assert.equal(st.bytes.toTarget, BigInt(payload.length));

        // And the library can be loaded and used again in a fresh worker.
        const w2 = startProxyWorker(engine, echo.port);
        t.after(async () => {
          await withTimeout(w2.worker.terminate(), 5000, 'terminate').catch(() => {});
        });
        const { port: port2 } = await w2.next('ready');
        const again = await exchange(port2, V4, Buffer.from('second worker'), { keep: true });
        assert.equal(again.data.toString(), 'second worker');
        w2.worker.postMessage('close');
        await w2.next('closed', 5000);
        assert.equal(await withTimeout(w2.exited, 5000, 'second worker exits'), 0);
      },
    );

    test(
      'a terminated worker releases its listening socket and connections',
      { timeout: 30000 },
      async (t) => {
        const w = startProxyWorker(engine, echo.port);
        let live;
        t.after(async () => {
          live?.destroy();
          await withTimeout(w.worker.terminate(), 5000, 'terminate').catch(() => {});
        });
        const { port } = await w.next('ready');
        live = await connect(port);
        await pingEcho(live);
        await withTimeout(w.worker.terminate(), 5000, 'worker.terminate() with a live proxy');
        await waitPeerClosed(live, 3000, 'the live connection through the terminated worker is closed');
        await waitFor(
          () =>
            expectRefused(port, V4).then(
              () => true,
              () => false,
            ),
          {
            timeout: 3000,
            interval: 100,
            what: `port ${port} of the terminated worker's proxy refuses connections`,
          },
        );
        // The main proxy is unaffected.
        const mine = await addMapping(proxy, echo.port);
        t.after(() => safeRemove(proxy, mine));
        const got = await exchange(mine.listen.port, V4, Buffer.from('main ok'), { keep: true });
        assert.equal(got.data.toString(), 'main ok');
      },
    );
  });

  describe(`child processes [${engine}]`, () => {
    let echo;

    before(async () => {
      echo = await startEchoServer();
    });

    after(async () => {
      await closeServers(echo);
    });

    test(
      'unref(): a process with only a mapping exits by itself with code 0',
      { timeout: 20000 },
      async (t) => {
        const c = spawnChild(childScript(engine, echo.port, 'proxy.unref();'));
        t.after(async () => {
          c.kill();
          await withTimeout(c.exited, 5000, 'child exit').catch(() => {});
        });
        const result = await withTimeout(c.exited, 5000, 'unref()ed child exits by itself');
        assert.deepEqual(result, { code: 0, signal: null }, `stderr: ${c.stderr}`);
        await c.ready(1000); // it really got as far as add() + unref()
      },
    );

    test('without unref(): the process stays alive and serves', { timeout: 20000 }, async (t) => {
      const c = spawnChild(childScript(engine, echo.port, ''));
      t.after(async () => {
        c.kill();
        await withTimeout(c.exited, 5000, 'child killed').catch(() => {});
      });
      const port = await c.ready();
      await sleep(1000);
      assert.equal(c.child.exitCode, null, `child must still be running; stderr: ${c.stderr}`);
      assert.equal(c.child.signalCode, null);
      const got = await exchange(port, V4, Buffer.from('child proxy'), { keep: true });
      assert.equal(got.data.toString(), 'child proxy', 'the child process forwards');
    });

    test('unref() then ref(): the process stays alive', { timeout: 20000 }, async (t) => {
      const c = spawnChild(childScript(engine, echo.port, 'proxy.unref(); proxy.ref();'));
      t.after(async () => {
        c.kill();
        await withTimeout(c.exited, 5000, 'child killed').catch(() => {});
      });
      await c.ready();
      await sleep(1000);
      assert.equal(c.child.exitCode, null, `child must still be running; stderr: ${c.stderr}`);
      assert.equal(c.child.signalCode, null);
    });

    test(
      'close(): a process that closes its proxy exits by itself with code 0',
      { timeout: 20000 },
      async (t) => {
        const c = spawnChild(childScript(engine, echo.port, 'await proxy.close();'));
        t.after(async () => {
          c.kill();
          await withTimeout(c.exited, 5000, 'child exit').catch(() => {});
        });
        const result = await withTimeout(c.exited, 8000, 'child exits after close()');
        assert.deepEqual(result, { code: 0, signal: null }, `stderr: ${c.stderr}`);
      },
    );

    test(
      'remove() of its only mapping: the process exits by itself with code 0',
      { timeout: 20000 },
      async (t) => {
        const c = spawnChild(childScript(engine, echo.port, 'await proxy.remove(m);'));
        t.after(async () => {
          c.kill();
          await withTimeout(c.exited, 5000, 'child exit').catch(() => {});
        });
        const result = await withTimeout(c.exited, 5000, 'child exits once no mapping is left');
        assert.deepEqual(result, { code: 0, signal: null }, `stderr: ${c.stderr}`);
        await c.ready(1000);
      },
    );

    test('a proxy without mappings does not keep the process alive', { timeout: 20000 }, async () => {
      const script = `
import { createProxy } from ${JSON.stringify(DIST_URL)};
const proxy = createProxy({ engine: ${JSON.stringify(engine)} });
console.log('READY 0 ' + proxy.engine);
`;
      const c = spawnChild(script);
      try {
        const result = await withTimeout(c.exited, 5000, 'child with an idle proxy exits by itself');
        assert.deepEqual(result, { code: 0, signal: null }, `stderr: ${c.stderr}`);
        await c.ready(1000);
      } finally {
        c.kill();
        await withTimeout(c.exited, 5000, 'child exit').catch(() => {});
      }
    });
  });
}
