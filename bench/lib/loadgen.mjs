// Small Node load generators for what the established tools do not cover. They run as their
// own process (inside the client namespace when there is one) and print one JSON line.
//
//   node bench/lib/loadgen.mjs latency HOST PORT SECONDS CONCURRENCY
//       keep-alive HTTP GETs in a closed loop on CONCURRENCY connections; every request's
//       round trip goes into an HdrHistogram (hdr-histogram-js, microseconds, 3 digits)
//   node bench/lib/loadgen.mjs hold HOST PORT COUNT
//       opens COUNT connections to an echo target, checks each end to end with one byte,
//       prints {"open": COUNT} and keeps them until stdin closes or SIGTERM
import net from 'node:net';
import hdr from 'hdr-histogram-js';

const REQUEST = (host) =>
  Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: portsplice-bench\r\n\r\n`);

/** Counts complete HTTP responses (headers plus Content-Length bytes) in a byte stream. */
class ResponseCounter {
  #pending = null;
  #bodyLeft = -1;
  push(chunk) {
    let buffer = this.#pending ? Buffer.concat([this.#pending, chunk]) : chunk;
    let complete = 0;
    for (;;) {
      if (this.#bodyLeft >= 0) {
        if (buffer.length < this.#bodyLeft) {
          this.#bodyLeft -= buffer.length;
          buffer = buffer.subarray(buffer.length);
          break;
        }
        buffer = buffer.subarray(this.#bodyLeft);
        this.#bodyLeft = -1;
        complete++;
        continue;
      }
      const end = buffer.indexOf('\r\n\r\n');
      if (end === -1) break;
      const match = /\r\ncontent-length:\s*(\d+)/i.exec(buffer.toString('latin1', 0, end));
      this.#bodyLeft = match ? Number(match[1]) : 0;
      buffer = buffer.subarray(end + 4);
    }
    this.#pending = buffer.length > 0 ? buffer : null;
    return complete;
  }
}

function connect(host, port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, noDelay: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

async function latency(host, port, seconds, concurrency) {
  const histogram = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  });
  const request = REQUEST(host);
  const deadline = performance.now() + seconds * 1000;
  let errors = 0;
  let requests = 0;
  const started = performance.now();
  const loop = async () => {
    let socket;
    try {
      socket = await connect(host, port);
    } catch {
      errors++;
      return;
    }
    const counter = new ResponseCounter();
    await new Promise((resolve) => {
      let sentAt = 0;
      const send = () => {
        if (performance.now() >= deadline) return resolve();
        sentAt = performance.now();
        socket.write(request);
      };
      socket.on('data', (chunk) => {
        const n = counter.push(chunk);
        if (n === 0) return;
        histogram.recordValue(Math.max(1, Math.round((performance.now() - sentAt) * 1000)));
        requests += n;
        send();
      });
      socket.on('error', () => {
        errors++;
        resolve();
      });
      socket.on('close', resolve);
      send();
    });
    socket.destroy();
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsed = (performance.now() - started) / 1000;
  const at = (p) => histogram.getValueAtPercentile(p);
  return {
    requests,
    seconds: elapsed,
    rps: requests / elapsed,
    errors,
    concurrency,
    meanUs: histogram.mean,
    p50Us: at(50),
    p90Us: at(90),
    p99Us: at(99),
    p999Us: at(99.9),
    maxUs: histogram.maxValue,
  };
}

async function hold(host, port, count) {
  const sockets = [];
  let next = 0;
  let failed = 0;
  const openOne = async () => {
    while (next < count) {
      next++;
      try {
        const socket = await connect(host, port);
        socket.on('error', () => {});
        await new Promise((resolve, reject) => {
          socket.once('data', resolve);
          socket.once('close', () => reject(new Error('closed')));
          socket.write('x');
        });
        sockets.push(socket);
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(64, count) }, openOne));
  process.stdout.write(`${JSON.stringify({ open: sockets.length, failed })}\n`);
  const finish = () => {
    for (const socket of sockets) socket.destroy();
    process.exit(0);
  };
  process.stdin.on('end', finish);
  process.stdin.on('error', finish);
  process.stdin.resume();
  process.on('SIGTERM', finish);
  process.on('SIGINT', finish);
}

const [mode, host, port, a, b] = process.argv.slice(2);
if (mode === 'latency') {
  const result = await latency(host, Number(port), Number(a), Number(b ?? 1));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} else if (mode === 'hold') {
  await hold(host, Number(port), Number(a));
} else {
  console.error('usage: loadgen.mjs latency HOST PORT SECONDS CONCURRENCY | hold HOST PORT COUNT');
  process.exit(2);
}
