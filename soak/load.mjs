// The load process of the soak test (forked by soak.mjs, the process under test): the target
// servers and the clients, so that their descriptors and memory do not count in the
// measured process. It checks every byte (sha256 on both ends) and reports over IPC (see
// protocol.mjs).
import { createHash, randomBytes, randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  HEADER_SIZE,
  MODE,
  MODE_NAMES,
  MiB,
  TCP_MAGIC,
  UDP_HEADER_SIZE,
  UDP_MAGIC,
  timeLimit,
} from './protocol.mjs';

// Bulk streams are paced, each way, so that they last seconds and leave this process
// (which hashes every byte twice) time for the short connections.
const BULK_RATE = 24 * MiB;

async function runLoad() {
  const POOL_SIZE = 8 * MiB;
  const pool = randomBytes(POOL_SIZE);
  const totals = {
    tcp: { ok: 0, cut: 0, bytesVerified: 0, byMode: {} },
    udp: { flows: 0, sent: 0, verified: 0, lost: 0, late: 0, cut: 0, bytes: 0 },
    errors: 0,
  };
  for (const name of Object.keys(MODE)) totals.tcp.byMode[name] = { ok: 0, cut: 0 };
  // Messages to the proxy process; if it has gone, so does this process.
  const send = (message) => process.connected && process.send(message);
  process.on('disconnect', () => process.exit(0));
  const fail = (text) => {
    totals.errors++;
    send({ type: 'error', text });
  };
  let running = false;
  let stopRequested = false;
  let mappings = [];
  const retired = new Set();

  // A slice of the random pool: the payloads.
  const piece = (max) => {
    const length = Math.min(max, 1 + randomInt(Math.min(max, 256 * 1024)));
    const offset = randomInt(POOL_SIZE - length + 1);
    return pool.subarray(offset, offset + length);
  };
  const drained = (socket) =>
    new Promise((resolve, reject) => {
      const cleanup = () => {
        socket.off('drain', onDrain);
        socket.off('close', onClose);
      };
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(Object.assign(new Error('closed while writing'), { code: 'ECLOSED' }));
      };
      socket.on('drain', onDrain);
      socket.on('close', onClose);
    });
  // Writes `n` bytes from the pool, hashing them, at most `rate` bytes a second if given.
  // `keep` collects them too. Returns `n`.
  const sendBytes = async (socket, n, hash, { keep, rate } = {}) => {
    const start = Date.now();
    let left = n;
    while (left > 0) {
      if (socket.destroyed) throw Object.assign(new Error('destroyed while writing'), { code: 'ECLOSED' });
      const chunk = piece(left);
      left -= chunk.length;
      hash.update(chunk);
      keep?.push(chunk);
      if (!socket.write(chunk)) await drained(socket);
      if (rate) {
        const ahead = ((n - left) / rate) * 1000 - (Date.now() - start);
        if (ahead > 5) await sleep(ahead);
      }
    }
    return n;
  };

  // --- Target servers ------------------------------------------------------------------------

  // What the target servers saw of each connection, handed to the client that made it.
  const results = new Map();
  const resultWaiters = new Map();
  const abandoned = new Set();
  const putResult = (id, result) => {
    if (abandoned.delete(id)) return;
    const waiter = resultWaiters.get(id);
    if (waiter) {
      resultWaiters.delete(id);
      waiter(result);
    } else {
      results.set(id, result);
    }
  };
  const takeResult = (id, timeoutMs) => {
    if (results.has(id)) {
      const r = results.get(id);
      results.delete(id);
      return Promise.resolve(r);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        resultWaiters.delete(id);
        abandoned.add(id);
        resolve(null);
      }, timeoutMs);
      resultWaiters.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  };
  const abandonResult = (id) => {
    if (!results.delete(id)) abandoned.add(id);
  };

  const serveTcp = (socket) => {
    socket.setNoDelay(true);
    const st = { recv: createHash('sha256'), recvBytes: 0, sent: createHash('sha256'), sentBytes: 0 };
    let head = Buffer.alloc(0);
    let id = -1;
    let mode = 0;
    let down = 0;
    let up = 0;
    let sawEnd = false;
    let error = null;
    let kept = null;
    const send = async (n) => {
      try {
        await sendBytes(socket, n, st.sent, { keep: kept, rate: mode === MODE.bulk ? BULK_RATE : 0 });
        st.sentBytes += n;
      } catch {
        /* The connection died; the client judges the outcome. */
      }
    };
    const onHeader = () => {
      if (head.readUInt32BE(0) !== TCP_MAGIC) {
        fail(`target: bad header ${head.subarray(0, HEADER_SIZE).toString('hex')}`);
        socket.destroy();
        return;
      }
      id = head.readUInt32BE(4);
      mode = head.readUInt8(8);
      down = Number(head.readBigUInt64BE(12));
      up = Number(head.readBigUInt64BE(20));
      if (mode === MODE.bulk || mode === MODE.halfCloseServer) send(down).then(() => socket.end());
      else if (mode === MODE.resetInFlight) kept = [];
      if (up === 0) onAllReceived();
    };
    // The reset modes act once the client's bytes are all in.
    let allReceived = false;
    const onAllReceived = () => {
      allReceived = true;
      if (mode === MODE.resetByClient) {
        socket.write('A');
        st.sent.update('A');
        st.sentBytes += 1;
      } else if (mode === MODE.resetByServer) {
        send(down); // The client acknowledges them with one more byte; then reset.
      } else if (mode === MODE.resetInFlight) {
        // Once the bytes are with the kernel: reset, while they are still on their way.
        send(down).then(() => socket.write(Buffer.alloc(0), () => socket.resetAndDestroy()));
      }
    };
    const onBody = (chunk) => {
      st.recv.update(chunk);
      st.recvBytes += chunk.length;
      if (!allReceived && st.recvBytes >= up) onAllReceived();
      if (mode === MODE.resetByServer && st.recvBytes > up) socket.resetAndDestroy();
      if (mode === MODE.echo || mode === MODE.trickle) {
        st.sent.update(chunk);
        st.sentBytes += chunk.length;
        if (!socket.write(chunk)) {
          socket.pause();
          socket.once('drain', () => socket.resume());
        }
      }
    };
    socket.on('data', (chunk) => {
      if (id < 0) {
        head = Buffer.concat([head, chunk]);
        if (head.length < HEADER_SIZE) return;
        chunk = head.subarray(HEADER_SIZE);
        onHeader();
        if (id < 0) return;
      }
      if (chunk.length > 0) onBody(chunk);
    });
    socket.on('end', () => {
      sawEnd = true;
      if (mode === MODE.echo || mode === MODE.trickle) socket.end();
      else if (mode === MODE.halfCloseClient) send(down).then(() => socket.end());
    });
    socket.on('error', (e) => {
      error = e.code ?? e.message;
    });
    socket.on('close', () => {
      if (id < 0) return; // Cut before the header arrived: nothing to report.
      putResult(id, {
        mode,
        recvHash: st.recv.digest('hex'),
        recvBytes: st.recvBytes,
        sentHash: st.sent.digest('hex'),
        sentBytes: st.sentBytes,
        sentData: kept ? Buffer.concat(kept) : null,
        sawEnd,
        error,
      });
    });
  };

  const serveUdp = (socket) => {
    socket.on('message', (msg, rinfo) => {
      if (msg.length < UDP_HEADER_SIZE || msg.readUInt32BE(0) !== UDP_MAGIC) {
        fail(`udp target: a datagram without the soak header (${msg.length} bytes)`);
        return;
      }
      const length = msg.readUInt32BE(12);
      const payload = msg.subarray(UDP_HEADER_SIZE);
      if (
        payload.length !== length ||
        !createHash('sha256').update(payload).digest().equals(msg.subarray(16, 48))
      ) {
        fail(`udp target: corrupted datagram (flow ${msg.readUInt32BE(4)}, seq ${msg.readUInt32BE(8)})`);
        return;
      }
      socket.send(msg, rinfo.port, rinfo.address);
    });
  };

  const listenTcp = (host) =>
    new Promise((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: true }, serveTcp);
      server.on('error', reject);
      server.listen({ host, port: 0, backlog: 4096 }, () => resolve(server));
    });
  const bindUdp = (type, host) =>
    new Promise((resolve, reject) => {
      const socket = dgram.createSocket({ type, recvBufferSize: 4 * MiB, sendBufferSize: 4 * MiB });
      serveUdp(socket);
      socket.on('error', reject);
      socket.bind(0, host, () => resolve(socket));
    });
  const tcp4 = await listenTcp('127.0.0.1');
  const tcp6 = await listenTcp('::1');
  const udp4 = await bindUdp('udp4', '127.0.0.1');
  const udp6 = await bindUdp('udp6', '::1');

  // --- Clients -------------------------------------------------------------------------------

  let nextConnection = 1;
  let nextFlow = 1;
  const pick = (proto) => {
    const live = mappings.filter((m) => m.proto === proto && !retired.has(m.id));
    return live.length > 0 ? live[randomInt(live.length)] : null;
  };

  /** One TCP connection of `mode` through `m`, checked at both ends. */
  const tcpConnection = async (m, mode, up, down) => {
    const id = nextConnection++;
    const name = MODE_NAMES[mode];
    const what = `${name} #${id} via ${m.host}:${m.port}${m.churn ? ' (churn)' : ''} up ${up} down ${down}`;
    const socket = net.connect({ host: m.host, port: m.port, allowHalfOpen: true });
    socket.setNoDelay(true);
    const recv = createHash('sha256');
    const sent = createHash('sha256');
    const received = mode === MODE.resetInFlight ? [] : null;
    let recvBytes = 0;
    let sentBytes = 0;
    let sawEnd = false;
    let error = null;
    let onData = null;
    let onEnd = null;
    let probe = null;
    socket.on('data', (chunk) => {
      recv.update(chunk);
      recvBytes += chunk.length;
      received?.push(chunk);
      onData?.();
    });
    socket.on('end', () => {
      sawEnd = true;
      onEnd?.();
      if (mode === MODE.resetInFlight) {
        // See MODE: a reset must make this write fail; a half-close would let it through.
        socket.write('P');
        probe = setTimeout(() => socket.destroy(), 10_000);
      }
    });
    const received_ = (n) =>
      recvBytes >= n || socket.destroyed
        ? Promise.resolve()
        : new Promise((resolve) => {
            onData = () => {
              if (recvBytes >= n) resolve();
            };
            onEnd = resolve;
          });
    socket.on('error', (e) => {
      error = e.code ?? e.message;
    });
    const closed = new Promise((resolve) =>
      socket.on('close', () => {
        clearTimeout(probe);
        onData?.();
        onEnd?.();
        resolve();
      }),
    );
    const header = Buffer.alloc(HEADER_SIZE);
    header.writeUInt32BE(TCP_MAGIC, 0);
    header.writeUInt32BE(id, 4);
    header.writeUInt8(mode, 8);
    header.writeBigUInt64BE(BigInt(down), 12);
    header.writeBigUInt64BE(BigInt(up), 20);
    const timeout = setTimeout(() => {
      fail(`${what}: no end after 120 s (received ${recvBytes}, sawEnd ${sawEnd}, error ${error})`);
      socket.destroy();
    }, 120_000);

    try {
      socket.write(header);
      if (mode === MODE.echo || mode === MODE.halfCloseClient) {
        sentBytes += await sendBytes(socket, up, sent);
        socket.end();
      } else if (mode === MODE.bulk) {
        sentBytes += await sendBytes(socket, up, sent, { rate: BULK_RATE });
        socket.end();
      } else if (mode === MODE.trickle) {
        for (let i = 0; i < 10 && !socket.destroyed; i++) {
          sentBytes += await sendBytes(socket, 1 + randomInt(2000), sent);
          await sleep(50 + randomInt(300));
        }
        socket.end();
      } else if (mode === MODE.halfCloseServer) {
        // Only once the target's FIN has arrived does the client send its part.
        if (!sawEnd) await new Promise((resolve) => (onEnd = resolve));
        sentBytes += await sendBytes(socket, up, sent);
        socket.end();
      } else if (mode === MODE.resetByClient) {
        sentBytes += await sendBytes(socket, up, sent);
        await received_(1);
        socket.resetAndDestroy();
      } else if (mode === MODE.resetByServer) {
        sentBytes += await sendBytes(socket, up, sent);
        await received_(down);
        socket.write('K');
        sent.update('K');
        sentBytes += 1;
      } else if (mode === MODE.resetInFlight) {
        sentBytes += await sendBytes(socket, up, sent);
      }
    } catch {
      /* Judged below from what the socket saw. */
    }
    await closed;
    clearTimeout(timeout);

    const cut = retired.has(m.id);
    const clientHash = recv.digest('hex');
    const sentHash = sent.digest('hex');
    // A connection on a mapping being removed is reset by the removal.
    if (error && cut && ['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ECLOSED'].includes(error)) {
      totals.tcp.cut++;
      totals.tcp.byMode[name].cut++;
      abandonResult(id);
      return;
    }
    const resetModes = [MODE.resetByServer, MODE.resetInFlight];
    if (error && !resetModes.includes(mode)) {
      fail(`${what}: ${error} at the client`);
      abandonResult(id);
      return;
    }
    if (resetModes.includes(mode)) {
      const server = await takeResult(id, 10_000);
      const problems = [];
      if (mode === MODE.resetByServer) {
        if (sawEnd) problems.push("the target's reset reached the client as a clean end");
        else if (error !== 'ECONNRESET') problems.push(`the target's reset reached the client as ${error}`);
      } else if (!['ECONNRESET', 'EPIPE'].includes(error)) {
        problems.push(
          `the target's reset reached the client as ${sawEnd ? 'a clean end, and a write after it went through' : error}`,
        );
      }
      if (!server) problems.push('no report from the target');
      else {
        if (server.recvBytes !== sentBytes)
          problems.push(`the target received ${server.recvBytes} of ${sentBytes} bytes`);
        if (server.recvHash !== sentHash) problems.push('sha256 of the bytes to the target differs');
        if (
          mode === MODE.resetByServer &&
          (recvBytes !== server.sentBytes || clientHash !== server.sentHash)
        ) {
          problems.push(`the client received ${recvBytes} of ${server.sentBytes} bytes, or other bytes`);
        }
        if (mode === MODE.resetInFlight) {
          const got = Buffer.concat(received);
          if (!server.sentData.subarray(0, got.length).equals(got)) {
            problems.push('the bytes before the reset are not a prefix of what the target sent');
          }
        }
      }
      if (problems.length > 0) {
        fail(`${what}: ${problems.join('; ')}`);
        return;
      }
      totals.tcp.byMode[name].ok++;
      totals.tcp.ok++;
      totals.tcp.bytesVerified += recvBytes + server.recvBytes;
      return;
    }
    const server = await takeResult(id, 10_000);
    if (!server) {
      if (cut) {
        totals.tcp.cut++;
        totals.tcp.byMode[name].cut++;
      } else {
        fail(`${what}: no report from the target`);
      }
      return;
    }
    if (mode === MODE.resetByClient) {
      if (server.sawEnd) fail(`${what}: the client's reset reached the target as a clean end`);
      else if (server.error !== 'ECONNRESET')
        fail(`${what}: the client's reset reached the target as ${server.error}`);
      else if (server.recvBytes !== sentBytes || server.recvHash !== sentHash) {
        fail(`${what}: the target received ${server.recvBytes} of ${sentBytes} bytes, or other bytes`);
      } else {
        totals.tcp.byMode[name].ok++;
        totals.tcp.ok++;
        totals.tcp.bytesVerified += server.recvBytes;
      }
      return;
    }
    if (cut && (server.error || !server.sawEnd || !sawEnd)) {
      // The removal of the mapping reset the connection before it was over at both ends.
      totals.tcp.cut++;
      totals.tcp.byMode[name].cut++;
      return;
    }
    // Every other mode ends cleanly both ways with every byte delivered.
    const problems = [];
    if (!sawEnd) problems.push('the client saw no end');
    if (!server.sawEnd) problems.push('the target saw no end');
    if (server.error) problems.push(`the target saw ${server.error}`);
    if (server.recvBytes !== sentBytes)
      problems.push(`the target received ${server.recvBytes} of ${sentBytes} bytes`);
    if (server.recvHash !== sentHash) problems.push('sha256 of the bytes to the target differs');
    if (recvBytes !== server.sentBytes)
      problems.push(`the client received ${recvBytes} of ${server.sentBytes} bytes`);
    if (clientHash !== server.sentHash) problems.push('sha256 of the bytes to the client differs');
    if (problems.length > 0) {
      fail(`${what}: ${problems.join('; ')}`);
      return;
    }
    totals.tcp.byMode[name].ok++;
    totals.tcp.ok++;
    totals.tcp.bytesVerified += recvBytes + server.recvBytes;
  };

  /** One UDP flow: a socket that sends `count` datagrams in windows, each echoed and checked. */
  const udpFlow = async (m, count) => {
    const flow = nextFlow++;
    const socket = dgram.createSocket({ type: m.host.includes(':') ? 'udp6' : 'udp4' });
    const outstanding = new Map(); // seq -> sha256
    const seen = new Set();
    let onSettled = null;
    socket.on('message', (msg) => {
      if (msg.length < UDP_HEADER_SIZE || msg.readUInt32BE(0) !== UDP_MAGIC || msg.readUInt32BE(4) !== flow) {
        fail(`udp flow ${flow} via ${m.host}:${m.port}: a reply that is not its own (${msg.length} bytes)`);
        return;
      }
      const seq = msg.readUInt32BE(8);
      const payload = msg.subarray(UDP_HEADER_SIZE);
      const digest = createHash('sha256').update(payload).digest();
      if (payload.length !== msg.readUInt32BE(12) || !digest.equals(msg.subarray(16, 48))) {
        fail(`udp flow ${flow}: corrupted reply, seq ${seq}`);
        return;
      }
      if (seen.has(seq)) {
        fail(`udp flow ${flow}: duplicate reply, seq ${seq}`);
        return;
      }
      seen.add(seq);
      if (!outstanding.has(seq)) {
        totals.udp.late++;
        return;
      }
      outstanding.delete(seq);
      totals.udp.verified++;
      totals.udp.bytes += payload.length;
      if (outstanding.size === 0) onSettled?.();
    });
    socket.on('error', (e) => fail(`udp flow ${flow}: ${e.message}`));
    await new Promise((resolve) => socket.bind(0, m.host, resolve));
    totals.udp.flows++;
    let seq = 0;
    while (seq < count && !stopRequested && !retired.has(m.id)) {
      const window = 1 + randomInt(16);
      for (let i = 0; i < window; i++, seq++) {
        const roll = randomInt(100);
        const size = roll < 1 ? 8000 + randomInt(52000) : roll < 6 ? 1400 + randomInt(6600) : randomInt(1401);
        const payload = size === 0 ? Buffer.alloc(0) : piece(size);
        const msg = Buffer.alloc(UDP_HEADER_SIZE + payload.length);
        msg.writeUInt32BE(UDP_MAGIC, 0);
        msg.writeUInt32BE(flow, 4);
        msg.writeUInt32BE(seq, 8);
        msg.writeUInt32BE(payload.length, 12);
        createHash('sha256').update(payload).digest().copy(msg, 16);
        payload.copy(msg, UDP_HEADER_SIZE);
        outstanding.set(seq, true);
        socket.send(msg, m.port, m.host);
        totals.udp.sent++;
      }
      await Promise.race([new Promise((resolve) => (onSettled = resolve)), timeLimit(2000)]);
      onSettled = null;
      if (outstanding.size > 0) {
        if (retired.has(m.id)) {
          totals.udp.cut += outstanding.size;
          totals.udp.sent -= outstanding.size;
        } else {
          totals.udp.lost += outstanding.size;
        }
        outstanding.clear();
      }
      await sleep(randomInt(20));
    }
    await new Promise((resolve) => socket.close(resolve));
  };

  const lanes = [];
  const lane = (body) =>
    lanes.push(
      (async () => {
        while (!stopRequested) {
          try {
            await body();
          } catch (e) {
            fail(`lane: ${e.stack ?? e}`);
          }
        }
      })(),
    );
  const idleWait = () => sleep(50);
  const startLanes = () => {
    // Many short connections of every kind.
    for (let i = 0; i < 24; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        const roll = randomInt(100);
        const small = () => (randomInt(10) === 0 ? 0 : randomInt(64 * 1024));
        if (roll < 60) return tcpConnection(m, MODE.echo, small(), 0);
        if (roll < 72) return tcpConnection(m, MODE.halfCloseClient, small(), small());
        if (roll < 84) return tcpConnection(m, MODE.halfCloseServer, small(), small());
        if (roll < 90) return tcpConnection(m, MODE.resetByClient, randomInt(4096), 0);
        if (roll < 95) return tcpConnection(m, MODE.resetByServer, randomInt(4096), randomInt(32 * 1024));
        return tcpConnection(m, MODE.resetInFlight, randomInt(4096), 1 + randomInt(256 * 1024));
      });
    }
    // Long bulk streams: up to 256 MiB each way, paced, sometimes one way only.
    for (let i = 0; i < 2; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        const size = () => (randomInt(5) === 0 ? 0 : 16 * MiB + randomInt(240 * MiB));
        return tcpConnection(m, MODE.bulk, size(), size());
      });
    }
    // Slow connections that stay open for seconds.
    for (let i = 0; i < 4; i++) {
      lane(async () => {
        const m = pick('tcp');
        if (!m) return idleWait();
        return tcpConnection(m, MODE.trickle, 0, 0);
      });
    }
    // UDP flows, each a new client socket.
    for (let i = 0; i < 6; i++) {
      lane(async () => {
        const m = pick('udp');
        if (!m) return idleWait();
        return udpFlow(m, 50 + randomInt(1000));
      });
    }
  };

  const report = () => send({ type: 'stats', totals });
  const reporter = setInterval(report, 1000);
  process.on('message', async (message) => {
    if (message.type === 'mappings') {
      mappings = message.list;
    } else if (message.type === 'retire') {
      retired.add(message.id);
      send({ type: `retired:${message.id}` });
    } else if (message.type === 'start' && !running) {
      running = true;
      startLanes();
    } else if (message.type === 'stop') {
      stopRequested = true;
      await Promise.all(lanes);
      report();
      send({ type: 'done', totals });
    } else if (message.type === 'exit') {
      clearInterval(reporter);
      for (const server of [tcp4, tcp6]) server.close();
      for (const socket of [udp4, udp6]) socket.close();
      process.disconnect();
    }
  });
  process.send({
    type: 'ready',
    servers: {
      tcp4: tcp4.address().port,
      tcp6: tcp6.address().port,
      udp4: udp4.address().port,
      udp6: udp6.address().port,
    },
  });
}

await runLoad();
