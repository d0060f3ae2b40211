// @test-tag timing: CPU readings of busy processes
// The benchmark suite's peer methods (HAProxy, socat) and the CPU reading of a forking
// server, over real sockets on loopback in the current namespace. Skipped with the reason
// when a peer is not installed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { after, test } from 'node:test';
import { cleanupAll } from '../bench/lib/cleanup.mjs';
import { METHODS, startMethod } from '../bench/lib/methods.mjs';
import { haproxyConfig } from '../bench/lib/peers.mjs';
import { childPids, freePort, processCpuSeconds, processTreeCpuSeconds, sleep } from '../bench/lib/sys.mjs';
import { findTools } from '../bench/lib/tools.mjs';

after(() => cleanupAll());

const tools = findTools();

function echoServer() {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => socket.pipe(socket));
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

/** Sends `payload` on a new connection to port and resolves with what comes back. */
function roundTrip(port, payload) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const chunks = [];
    let received = 0;
    socket.on('data', (d) => {
      chunks.push(d);
      received += d.length;
      if (received >= payload.length) socket.end();
    });
    socket.on('end', () => resolve(Buffer.concat(chunks)));
    socket.on('error', reject);
    socket.write(payload);
  });
}

test('the CPU of a forking process counts its children, reaped or not', async (t) => {
  // Two children that each burn 0.3 s of CPU, reaped by the shell (wait), which then idles.
  const burn = `${JSON.stringify(process.execPath)} -e "while (process.cpuUsage().user < 300000);"`;
  // exec: the shell becomes sleep, with no child of its own and its cutime kept.
  const shell = spawn('sh', ['-c', `${burn} & ${burn} & wait; exec sleep 30`], { stdio: 'ignore' });
  t.after(async () => {
    shell.kill('SIGKILL');
  });
  const deadline = Date.now() + 25000;
  let seen = false;
  while (Date.now() < deadline) {
    if (childPids(shell.pid).length > 0) seen = true;
    if (seen && childPids(shell.pid).length === 0) break; // both reaped
    await sleep(20);
  }
  assert.ok(seen, 'the children were listed while they ran');
  assert.ok(processCpuSeconds(shell.pid) < 0.1, 'the shell itself burns nothing');
  assert.ok(processTreeCpuSeconds(shell.pid) >= 0.4, `tree CPU ${processTreeCpuSeconds(shell.pid)} s`);
});

test('the HAProxy configuration forwards raw TCP with splice-auto and no logging', () => {
  const config = haproxyConfig([
    { name: 'http', host: '127.0.0.1', port: 20001, targetHost: '198.18.0.2', targetPort: 8000 },
  ]);
  assert.match(config, /^\s*mode tcp$/m);
  assert.match(config, /^\s*option splice-auto$/m);
  assert.match(config, /^\s*bind 127\.0\.0\.1:20001$/m);
  assert.match(config, /^\s*server target 198\.18\.0\.2:8000$/m);
  assert.doesNotMatch(config, /^\s*log\b/m);
});

for (const id of ['haproxy', 'socat']) {
  const method = METHODS.find((m) => m.id === id);
  test(
    `${id} as a method forwards TCP, reports its CPU and stops its processes`,
    {
      skip: tools[id].path ? false : `${id} is not installed (${tools[id].install})`,
    },
    async () => {
      const target = await echoServer();
      const place = {
        hostNs: null,
        listenHost: '127.0.0.1',
        targetHost: '127.0.0.1',
        allocPort: () => freePort('127.0.0.1'),
      };
      const services = [{ name: 'echo', protos: ['tcp'], targetPort: target.address().port }];
      const instance = await startMethod(method, place, services, { tools });
      try {
        const { port } = instance.endpoint('echo');
        const payload = Buffer.alloc(256 * 1024, 'x');
        const cpu0 = await instance.cpuSeconds();
        for (let i = 0; i < 20; i++) assert.deepEqual(await roundTrip(port, payload), payload);
        assert.ok((await instance.cpuSeconds()) >= cpu0);
        assert.ok((await instance.rssKb()) > 0);
        // socat forks a child per connection: one held open shows up as a child.
        if (id === 'socat') {
          const held = net.connect({ host: '127.0.0.1', port });
          held.on('error', () => {}); // reset when socat stops
          await new Promise((resolve) => held.once('connect', resolve));
          const deadline = Date.now() + 5000;
          while (childPids(instance.pids[0]).length === 0 && Date.now() < deadline) await sleep(20);
          const children = childPids(instance.pids[0]);
          assert.ok(children.length >= 1, 'a child for the open connection');
          await instance.stop();
          // The whole process group is stopped: the child holding the connection too (gone,
          // or a zombie where nobody reaps the orphan).
          const stopped = (pid) => {
            try {
              return /^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
            } catch {
              return true;
            }
          };
          const until = Date.now() + 5000;
          while (!children.every(stopped) && Date.now() < until) await sleep(20);
          for (const pid of children) assert.ok(stopped(pid), `socat child ${pid} still runs`);
          held.destroy();
        }
      } finally {
        await instance.stop();
        target.close();
      }
    },
  );
}
