// The cost of maxConnections and idleTimeoutMs: the proxy's CPU time per connection (churn:
// connect, 64 B echoed, client closes) and per round trip (keep-alive: 64 B ping-pong on open
// connections), with each option off and on, configurations interleaved round by round so
// that a loaded machine affects them alike. The proxy runs in a child process (its CPU time
// is process.cpuUsage() there, engine threads included); the load and the echo target run here.
//
//   node bench/limits-cost.mjs [--engine splice|stream] [--seconds 3] [--rounds 3] [--clients 16]
import net from 'node:net';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    engine: { type: 'string', default: 'splice' },
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    clients: { type: 'string', default: '16' },
    child: { type: 'boolean', default: false },
  },
});

if (values.child) {
  // The proxy: { engine, mapping } in, { port } out; 'cpu' answers process.cpuUsage().
  let proxy;
  // Listening before anything is awaited: a message that arrives with no listener is lost.
  process.on('message', async (msg) => {
    if (msg.type === 'start') {
      const { createProxy } = await import('../dist/index.js');
      proxy = createProxy({ engine: msg.engine, threads: 1 });
      const m = await proxy.add(msg.mapping);
      process.send({ port: m.listen.port });
    } else if (msg.type === 'cpu') {
      const c = process.cpuUsage();
      const tcp = proxy.stats().mappings[0].connections;
      process.send({ cpuUs: c.user + c.system, limitReached: tcp.limitReached, idleClosed: tcp.idleClosed });
    } else if (msg.type === 'close') {
      await proxy.close();
      process.exit(0);
    }
  });
} else {
  await main();
}

async function main() {
  const seconds = Number(values.seconds);
  const clients = Number(values.clients);
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  const target = { host: '127.0.0.1', port: echo.address().port };
  const configs = {
    off: {},
    'maxConnections (never reached)': { maxConnections: 100000 },
    [`maxConnections ${clients / 2} (reached)`]: { maxConnections: clients / 2 },
    'idleTimeoutMs 60000': { idleTimeoutMs: 60000 },
    both: { maxConnections: 100000, idleTimeoutMs: 60000 },
  };
  const results = {};
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const [name, extra] of Object.entries(configs)) {
      for (const test of ['churn', 'keepalive']) {
        const r = await run(test, { proto: 'tcp', listen: { host: '127.0.0.1', port: 0 }, target, ...extra });
        (results[`${test}: ${name}`] ??= []).push(r);
      }
    }
  }
  echo.close();
  console.log(
    `engine ${values.engine}, ${clients} clients, ${seconds} s x ${values.rounds} rounds (medians)`,
  );
  for (const [key, rs] of Object.entries(results)) {
    const med = (f) => rs.map(f).sort((a, b) => a - b)[Math.floor(rs.length / 2)];
    console.log(
      `${key.padEnd(45)} ${med((r) => r.rate)
        .toFixed(0)
        .padStart(7)} /s  ${med((r) => r.cpuUsPer)
        .toFixed(2)
        .padStart(7)} us CPU each`,
    );
  }

  async function run(test, mapping) {
    const child = fork(fileURLToPath(import.meta.url), ['--child'], { stdio: 'inherit' });
    const ask = (msg) =>
      new Promise((resolve) => {
        child.once('message', resolve);
        child.send(msg);
      });
    const { port } = await ask({ type: 'start', engine: values.engine, mapping });
    const before = await ask({ type: 'cpu' });
    const end = Date.now() + seconds * 1000;
    let count = 0;
    const payload = Buffer.alloc(64, 7);
    await Promise.all(Array.from({ length: clients }, () => (test === 'churn' ? churn() : keepalive())));
    const after = await ask({ type: 'cpu' });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.send({ type: 'close' });
    await exited;
    return { rate: count / seconds, cpuUsPer: (after.cpuUs - before.cpuUs) / Math.max(count, 1) };

    async function churn() {
      while (Date.now() < end) {
        await new Promise((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1');
          let got = 0;
          s.on('data', (d) => {
            got += d.length;
            if (got >= payload.length) s.end();
          });
          s.on('error', reject);
          s.on('close', resolve);
          s.write(payload);
        });
        count++;
      }
    }

    async function keepalive() {
      const s = net.connect(port, '127.0.0.1');
      await new Promise((r) => s.once('connect', r));
      while (Date.now() < end) {
        await new Promise((resolve) => {
          let got = 0;
          const onData = (d) => {
            got += d.length;
            if (got >= payload.length) {
              s.off('data', onData);
              resolve();
            }
          };
          s.on('data', onData);
          s.write(payload);
        });
        count++;
      }
      s.destroy();
    }
  }
}
