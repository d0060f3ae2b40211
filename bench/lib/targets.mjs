// Target servers that stand for the container's service, run as their own process (inside
// the container namespace when there is one). nginx is the HTTP target when it is
// installed (bench/lib/nginx.mjs); this file is the fallback and the echo server.
//
//   node bench/lib/targets.mjs http HOST PORT[,PORT...]   fixed "200 ok" response per request;
//                                                          keep-alive unless the request says
//                                                          "Connection: close" or is HTTP/1.0
//   node bench/lib/targets.mjs echo HOST PORT             echoes bytes back (holds connections)
//
// Prints "ready" on stdout once every port listens.
import net from 'node:net';

const BODY = 'ok\n';
const KEEP = Buffer.from(
  `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`,
);
const CLOSE = Buffer.from(
  `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
);
const WANTS_CLOSE = /^connection:\s*close\s*$/im;

function serveHttp(socket) {
  socket.setNoDelay(true);
  let pending = null;
  socket.on('data', (chunk) => {
    const buffer = pending ? Buffer.concat([pending, chunk]) : chunk;
    let start = 0;
    let answers = 0;
    let close = false;
    for (let end = buffer.indexOf('\r\n\r\n', start); end !== -1; end = buffer.indexOf('\r\n\r\n', start)) {
      const head = buffer.toString('latin1', start, end);
      start = end + 4;
      if (WANTS_CLOSE.test(head) || head.split('\r\n', 1)[0].endsWith(' HTTP/1.0')) {
        close = true;
        break;
      }
      answers++;
    }
    pending = start < buffer.length ? buffer.subarray(start) : null;
    if (answers === 1) socket.write(KEEP);
    else if (answers > 1) socket.write(Buffer.concat(new Array(answers).fill(KEEP)));
    if (close) socket.end(CLOSE);
  });
  socket.on('error', () => socket.destroy());
}

function serveEcho(socket) {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
}

const [mode, host, ports] = process.argv.slice(2);
const handler = { http: serveHttp, echo: serveEcho }[mode];
if (!handler || !host || !ports) {
  console.error('usage: targets.mjs http|echo HOST PORT[,PORT...]');
  process.exit(2);
}
await Promise.all(
  ports.split(',').map(
    (port) =>
      new Promise((resolve, reject) => {
        const server = net.createServer(handler);
        server.once('error', reject);
        server.listen({ host, port: Number(port), backlog: 4096 }, resolve);
      }),
  ),
);
process.stdout.write('ready\n');
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
