// A first bulk-transfer measurement: N bytes from a client through a proxy to a sink on
// loopback, for each engine, with the proxy's CPU time. The client and the sink run in a
// child process, so the CPU figure is the proxy's alone.
//
//   node bench/bulk.mjs [--bytes 1073741824] [--engines direct,splice,stream,docker-proxy] [--streams 1]
//
// "docker-proxy" runs /usr/sbin/docker-proxy (Debian's docker.io) when it is installed;
// "binary" runs portsplice's own drop-in binary. Their CPU time comes from /proc/PID/stat.
import { fork, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createProxy } from '../dist/index.js';

const CHUNK = Buffer.alloc(1 << 20, 0x5a);

async function peer() {
  // Child side: a sink that counts bytes, and a client that sends them on request.
  const sink = net.createServer((socket) => {
    socket.on('error', () => {});
    let received = 0;
    socket.on('data', (d) => (received += d.length));
    socket.on('end', () => {
      process.send({ type: 'received', bytes: received });
      socket.end();
    });
  });
  await new Promise((resolve) => sink.listen(0, '127.0.0.1', resolve));
  process.send({ type: 'sink', port: sink.address().port });
  process.on('message', async ({ type, port, bytes }) => {
    if (type !== 'send') return process.exit(0);
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    let left = bytes;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        if (!socket.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n)))
          return socket.once('drain', pump);
      }
      socket.end();
    };
    socket.on('connect', pump);
    socket.resume();
  });
}

function once(child, type) {
  return new Promise((resolve) => {
    const listener = (message) => {
      if (message.type === type) {
        child.off('message', listener);
        resolve(message);
      }
    };
    child.on('message', listener);
  });
}

const EXTERNAL = {
  'docker-proxy': '/usr/sbin/docker-proxy',
  binary: new URL('../build/Release/portsplice-docker-proxy', import.meta.url).pathname,
};

/** CPU seconds a process has used, from /proc/PID/stat (utime + stime). */
function processCpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Starts a docker-proxy-compatible binary and waits for "0\n" on its status pipe (fd 3). */
async function startExternal(path, port, targetPort) {
  const args = ['-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', String(port)];
  args.push('-container-ip', '127.0.0.1', '-container-port', String(targetPort));
  const child = spawn(path, args, { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] });
  const status = await new Promise((resolve) => {
    let text = '';
    child.stdio[3].on('data', (d) => (text += d));
    child.stdio[3].on('close', () => resolve(text));
  });
  if (!status.startsWith('0')) throw new Error(`${path} failed to start: ${status}`);
  return child;
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function measure(engine, bytes, streams, pipeSize) {
  if (EXTERNAL[engine] && !existsSync(EXTERNAL[engine]))
    return { engine, skipped: `${EXTERNAL[engine]} not found` };
  const child = fork(new URL(import.meta.url), ['--peer'], { stdio: 'inherit' });
  const { port: sinkPort } = await once(child, 'sink');
  let port = sinkPort;
  let proxy;
  let external;
  if (EXTERNAL[engine]) {
    port = await freePort();
    external = await startExternal(EXTERNAL[engine], port, sinkPort);
  } else if (engine !== 'direct') {
    proxy = createProxy({ engine, ...(engine === 'splice' && pipeSize ? { pipeSize } : {}) });
    const mapping = await proxy.add({
      proto: 'tcp',
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port: sinkPort },
    });
    port = mapping.listen.port;
  }
  const per = Math.floor(bytes / streams);
  const externalCpu = external ? processCpuSeconds(external.pid) : 0;
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  const done = Promise.all(Array.from({ length: streams }, () => once(child, 'received')));
  for (let i = 0; i < streams; i++) child.send({ type: 'send', port, bytes: per });
  const received = await done;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const used = process.cpuUsage(cpu);
  const cpuSeconds = external
    ? processCpuSeconds(external.pid) - externalCpu
    : (used.user + used.system) / 1e6;
  external?.kill('SIGINT');
  await proxy?.close();
  child.send({ type: 'exit' });
  const total = received.reduce((sum, r) => sum + r.bytes, 0);
  if (total !== per * streams) throw new Error(`${engine}: received ${total} of ${per * streams} bytes`);
  return { engine, bytes: total, seconds, gbps: (total * 8) / seconds / 1e9, cpuSeconds };
}

if (process.argv.includes('--peer')) {
  await peer();
} else {
  const { values } = parseArgs({
    options: {
      bytes: { type: 'string', default: String(1 << 30) },
      engines: { type: 'string', default: 'direct,splice,stream' },
      streams: { type: 'string', default: '1' },
      'pipe-size': { type: 'string', default: '0' },
    },
  });
  console.log('engine\tGiB\tseconds\tGbit/s\tproxy CPU s\tCPU s/GiB');
  for (const engine of values.engines.split(',')) {
    const r = await measure(
      engine,
      Number(values.bytes),
      Number(values.streams),
      Number(values['pipe-size']),
    );
    const gib = r.bytes / 2 ** 30;
    const cpu = engine === 'direct' ? '-' : r.cpuSeconds.toFixed(2);
    const perGib = engine === 'direct' ? '-' : (r.cpuSeconds / gib).toFixed(2);
    console.log(
      `${engine}\t${gib.toFixed(2)}\t${r.seconds.toFixed(2)}\t${r.gbps.toFixed(2)}\t${cpu}\t${perGib}`,
    );
  }
}
