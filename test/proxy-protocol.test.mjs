// PROXY protocol toward the target (`proxyProtocol: 'v1' | 'v2'`), both engines: the exact
// header bytes before a byte-exact payload (raw target), IPv4, IPv6, a dual-stack listener
// taking an IPv4 client, the address the client reached rather than the listener's
// wildcard, and real consumers of the header run by the tests: HAProxy (`accept-proxy`)
// and nginx (`proxy_protocol`), each answering the addresses it saw.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { createProxy } from '../dist/index.js';
import { parseArgs } from '../dist/cli/args.js';
import {
  ENGINES,
  V4,
  V6,
  MiB,
  randomPayload,
  withTimeout,
  startServer,
  freePort,
  collect,
  addMapping,
  statsOf,
  waitIdle,
  waitFor,
  safeClose,
  closeServers,
  checkByteInvariants,
  show,
  closedPort,
} from './helpers.mjs';

const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** The v2 header, written out field by field from the spec (section 2.2). */
function v2Header(family, src, dst, srcPort, dstPort) {
  const bytes = (a) =>
    family === 4 ? Buffer.from(a.split('.').map(Number)) : Buffer.from(expand6(a), 'hex');
  const addresses = Buffer.concat([bytes(src), bytes(dst)]);
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(srcPort, 0);
  ports.writeUInt16BE(dstPort, 2);
  const length = Buffer.alloc(2);
  length.writeUInt16BE(addresses.length + 4);
  return Buffer.concat([
    V2_SIGNATURE,
    Buffer.from([0x21, family === 4 ? 0x11 : 0x21]),
    length,
    addresses,
    ports,
  ]);
}

/** An IPv6 literal as 32 hex digits (the test's own expansion, for the few forms used here). */
function expand6(a) {
  const [head, tail = ''] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.map((g) => g.padStart(4, '0')).join('');
}

/**
 * A raw target that keeps every byte it receives until the client's FIN, then answers
 * "ok" and closes: what the proxy sent, header and payload, exactly.
 */
async function startRawTarget(host = V4) {
  const received = [];
  const srv = await startServer(
    (socket) => {
      collect(socket, { keep: true }).then(
        (r) => {
          received.push(r.data);
          socket.end('ok');
        },
        () => {},
      );
    },
    { host },
  );
  srv.received = received;
  return srv;
}

/** Connects (from `localAddress` when given), sends `payload` and FIN, waits for the answer. */
async function send(port, host, payload, localAddress) {
  const socket = net.connect({ port, host, localAddress, allowHalfOpen: true });
  socket.on('error', () => {});
  await withTimeout(
    new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject)),
    5000,
    'connect',
  );
  const ends = { address: socket.localAddress, port: socket.localPort };
  const answer = collect(socket, { keep: true });
  socket.end(payload);
  const r = await withTimeout(answer, 10000, 'answer');
  socket.destroy();
  return { ends, answer: r.data.toString('latin1'), raw: r.data };
}

async function withProxy(t, engine) {
  const proxy = createProxy({ engine });
  t.after(() => safeClose(proxy));
  return proxy;
}

for (const engine of ENGINES) {
  describe(`PROXY protocol toward the target [${engine}]`, () => {
    for (const version of ['v1', 'v2']) {
      test(`${version}: the exact header, then the payload byte for byte (IPv4, wildcard listener)`, async (t) => {
        const target = await startRawTarget();
        t.after(() => closeServers(target));
        const proxy = await withProxy(t, engine);
        // A wildcard listener: the header must carry the address the client reached
        // (127.0.0.2), not 0.0.0.0; the client comes from 127.0.0.3.
        const m = await addMapping(proxy, target.port, { listenHost: '0.0.0.0', proxyProtocol: version });
        const payload = randomPayload(200_000);
        const { ends, answer } = await send(m.listen.port, '127.0.0.2', payload, '127.0.0.3');
        assert.equal(answer, 'ok');
        assert.equal(ends.address, '127.0.0.3');
        const expected =
          version === 'v1'
            ? Buffer.from(`PROXY TCP4 127.0.0.3 127.0.0.2 ${ends.port} ${m.listen.port}\r\n`)
            : v2Header(4, '127.0.0.3', '127.0.0.2', ends.port, m.listen.port);
        const got = target.received[0];
        assert.deepEqual(
          got.subarray(0, expected.length),
          expected,
          `header: ${show(got.subarray(0, 60).toString('hex'))}`,
        );
        assert.ok(
          got.subarray(expected.length).equals(payload),
          'the payload follows the header byte for byte',
        );
        const st = await waitIdle(proxy, m);
        assert.equal(st.proxyHeaders.sent, 1);
        // The header is not client payload: bytes.toTarget counts the client's bytes only.
        assert.equal(st.bytes.toTarget, BigInt(payload.length));
        checkByteInvariants(assert, engine, st);
      });

      test(`${version}: IPv6 client and listener`, async (t) => {
        const target = await startRawTarget(V6);
        t.after(() => closeServers(target));
        const proxy = await withProxy(t, engine);
        const m = await addMapping(proxy, target.port, {
          listenHost: V6,
          targetHost: V6,
          proxyProtocol: version,
        });
        const { ends } = await send(m.listen.port, V6, Buffer.from('hello'));
        const expected =
          version === 'v1'
            ? Buffer.from(`PROXY TCP6 ::1 ::1 ${ends.port} ${m.listen.port}\r\nhello`)
            : Buffer.concat([v2Header(6, '::1', '::1', ends.port, m.listen.port), Buffer.from('hello')]);
        assert.deepEqual(target.received[0], expected);
      });

      test(`${version}: a dual-stack [::] listener announces an IPv4 client as IPv4`, async (t) => {
        const target = await startRawTarget();
        t.after(() => closeServers(target));
        const proxy = await withProxy(t, engine);
        const m = await addMapping(proxy, target.port, { listenHost: '::', proxyProtocol: version });
        const { ends } = await send(m.listen.port, V4, Buffer.from('x'));
        const expected =
          version === 'v1'
            ? Buffer.from(`PROXY TCP4 127.0.0.1 127.0.0.1 ${ends.port} ${m.listen.port}\r\nx`)
            : Buffer.concat([v2Header(4, V4, V4, ends.port, m.listen.port), Buffer.from('x')]);
        assert.deepEqual(target.received[0], expected);
        // And an IPv6 client of the same listener as IPv6.
        const six = await send(m.listen.port, V6, Buffer.from('y'));
        const expected6 =
          version === 'v1'
            ? Buffer.from(`PROXY TCP6 ::1 ::1 ${six.ends.port} ${m.listen.port}\r\ny`)
            : Buffer.concat([v2Header(6, V6, V6, six.ends.port, m.listen.port), Buffer.from('y')]);
        assert.deepEqual(target.received[1], expected6);
      });
    }

    test('v2: a large transfer after the header still moves by splice, both ways', async (t) => {
      const payload = randomPayload(8 * MiB);
      const back = randomPayload(3 * MiB);
      let header;
      const target = await startServer((socket) => {
        const chunks = [];
        socket.on('data', (c) => chunks.push(c));
        socket.on('end', () => {
          const all = Buffer.concat(chunks);
          header = all.subarray(0, 28);
          socket.end(Buffer.concat([Buffer.from(all.subarray(28).equals(payload) ? 'same' : 'diff'), back]));
        });
      });
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port, { proxyProtocol: 'v2' });
      const { ends, raw } = await send(m.listen.port, V4, payload);
      assert.equal(
        raw.subarray(0, 4).toString(),
        'same',
        'the payload arrived byte for byte after the header',
      );
      assert.ok(raw.subarray(4).equals(back), 'the reply arrived byte for byte');
      assert.deepEqual(header, v2Header(4, V4, V4, ends.port, m.listen.port));
      const st = await waitIdle(proxy, m);
      assert.equal(st.bytes.toTarget, BigInt(payload.length));
      assert.equal(st.bytes.toClient, BigInt(4 + back.length));
      checkByteInvariants(assert, engine, st);
      if (engine === 'splice')
        assert.ok(st.bytes.spliced > 0n, `spliced after the header (${show(st.bytes)})`);
    });

    test('off by default: no header, and the counter stays 0', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port);
      await send(m.listen.port, V4, Buffer.from('plain'));
      assert.deepEqual(target.received[0], Buffer.from('plain'));
      assert.equal((await waitIdle(proxy, m)).proxyHeaders.sent, 0);
    });

    test('refused on UDP and for an unknown version, naming the field', async (t) => {
      const proxy = await withProxy(t, engine);
      const udp = { proto: 'udp', listen: { host: V4, port: 0 }, target: { host: V4, port: 9 } };
      await assert.rejects(proxy.add({ ...udp, proxyProtocol: 'v2' }), {
        name: 'TypeError',
        message: /proxyProtocol applies to TCP mappings only/,
      });
      await assert.rejects(
        proxy.add({
          proto: 'tcp',
          listen: { host: V4, port: 0 },
          target: { host: V4, port: 9 },
          proxyProtocol: 'v3',
        }),
        { name: 'TypeError', message: /proxyProtocol must be one of 'v1', 'v2', got "v3"/ },
      );
      assert.equal(proxy.stats().mappings.length, 0);
    });

    test('a target that refuses: the client is reset and no header is counted', async (t) => {
      const proxy = await withProxy(t, engine);
      // Not freePort(): the port it frees can be handed to the proxy's own listener next.
      const closed = await closedPort();
      const m = await addMapping(proxy, closed, { proxyProtocol: 'v1' });
      const socket = net.connect({ port: m.listen.port, host: V4 });
      const outcome = await withTimeout(
        new Promise((resolve) => {
          socket.once('error', (e) => resolve(e.code));
          socket.once('close', () => resolve('close'));
        }),
        5000,
        'reset',
      );
      assert.ok(outcome === 'ECONNRESET' || outcome === 'close', outcome);
      const st = await waitIdle(proxy, m);
      assert.equal(st.connections.failed, 1);
      assert.equal(st.proxyHeaders.sent, 0);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Real consumers: HAProxy and nginx, each answering "SRC:PORT DST:PORT" as they saw them.
// ---------------------------------------------------------------------------------------------

function which(name) {
  for (const dir of ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin']) {
    const file = path.join(dir, name);
    if (spawnSync(file, ['-v'], { stdio: 'ignore' }).status === 0) return file;
  }
  return null;
}

/**
 * Runs a server in the foreground until the test ends; resolves once `ports` on `host`s accept.
 * `logFile`, when given, is shown if it never comes up.
 */
async function runDaemon(t, argv, ports, logFile) {
  // Not the sanitizer runtime that scripts/sanitize.sh preloads into node: it is for the addon.
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  let exited = false;
  child.on('exit', () => (exited = true));
  t.after(async () => {
    if (exited) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await withTimeout(gone, 5000, `${argv[0]} exit`, () => child.kill('SIGKILL')).catch(() => {});
  });
  for (const { host, port } of ports) {
    await waitFor(
      async () => {
        if (exited) throw new Error(`${argv[0]} exited: ${stderr}`);
        return new Promise((resolve) => {
          const s = net.connect({ host, port });
          s.once('connect', () => (s.destroy(), resolve(true)));
          s.once('error', () => resolve(false));
        });
      },
      {
        timeout: 10000,
        what: `${argv[0]} listening on ${host}:${port}`,
        describe: () => stderr + (logFile ? readLog(logFile) : ''),
      },
    );
  }
}

function readLog(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** GET / through `port` on `host`, from `localAddress`; resolves { body, ends }. */
function get(port, host, localAddress) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.get({ host, port, path: '/', localAddress, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body, ends }));
      });
      let ends;
      req.on('socket', (s) =>
        s.once('connect', () => (ends = { address: s.localAddress, port: s.localPort })),
      );
      req.on('error', reject);
    }),
    10000,
    `GET via ${host}:${port}`,
  );
}

/** How a consumer prints an address: IPv6 as-is, IPv4 dotted. */
const expectedLine = (src, srcPort, dst, dstPort) => `${src}:${srcPort} ${dst}:${dstPort}`;

/**
 * The cases every consumer is checked with: [listen host, connect host, client address,
 * the addresses the consumer must report].
 */
const CASES = [
  {
    name: 'IPv4, wildcard listener',
    listen: '0.0.0.0',
    to: '127.0.0.2',
    from: '127.0.0.4',
    src: '127.0.0.4',
    dst: '127.0.0.2',
  },
  { name: 'IPv6', listen: V6, to: V6, from: undefined, src: V6, dst: V6 },
  {
    name: 'dual-stack [::], IPv4 client',
    listen: '::',
    to: V4,
    from: '127.0.0.5',
    src: '127.0.0.5',
    dst: V4,
  },
];

async function checkConsumer(t, engine, consumerPort, versions) {
  const proxy = await withProxy(t, engine);
  for (const version of versions) {
    for (const c of CASES) {
      const m = await addMapping(proxy, consumerPort, { listenHost: c.listen, proxyProtocol: version });
      const { status, body, ends } = await get(m.listen.port, c.to, c.from);
      assert.equal(status, 200, `${version} ${c.name}: ${body}`);
      assert.equal(body.trim(), expectedLine(c.src, ends.port, c.dst, m.listen.port), `${version} ${c.name}`);
      assert.equal(statsOf(proxy, m).proxyHeaders.sent, 1, `${version} ${c.name}`);
      await proxy.remove(m);
    }
  }
}

const haproxy = which('haproxy');
const nginx = which('nginx');

for (const engine of ENGINES) {
  describe(`PROXY protocol consumers [${engine}]`, () => {
    test(
      'HAProxy with accept-proxy sees the client and the address it reached (v1, v2)',
      { skip: haproxy ? false : 'haproxy is not installed (apt-get install haproxy)' },
      async (t) => {
        const dir = mkdtempSync(path.join(os.tmpdir(), 'psp-haproxy-'));
        t.after(() => rmSync(dir, { recursive: true, force: true }));
        const port = await freePort();
        const file = path.join(dir, 'haproxy.cfg');
        // HAProxy 2.6 (configuration.txt): `accept-proxy` takes v1 and v2 on the bind line.
        writeFileSync(
          file,
          [
            'global',
            '  maxconn 100',
            'defaults',
            '  mode http',
            '  timeout connect 5s',
            '  timeout client 10s',
            '  timeout server 10s',
            'frontend pp',
            `  bind ${V4}:${port} accept-proxy`,
            '  http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port] %[dst]:%[dst_port]"',
            '',
          ].join('\n'),
        );
        await runDaemon(t, [haproxy, '-db', '-q', '-f', file], [{ host: V4, port }]);
        await checkConsumer(t, engine, port, ['v1', 'v2']);
      },
    );

    test(
      'nginx with listen ... proxy_protocol sees the client and the address it reached (v1, v2)',
      { skip: nginx ? false : 'nginx is not installed (apt-get install nginx-light)' },
      async (t) => {
        const dir = mkdtempSync(path.join(os.tmpdir(), 'psp-nginx-'));
        t.after(() => rmSync(dir, { recursive: true, force: true }));
        const port = await freePort();
        const log = path.join(dir, 'error.log');
        const temp = (name) => `${name}_temp_path ${path.join(dir, name)};`;
        writeFileSync(
          path.join(dir, 'nginx.conf'),
          [
            'daemon off;',
            'master_process off;',
            `pid ${path.join(dir, 'nginx.pid')};`,
            `error_log ${log} warn;`,
            'events { worker_connections 64; }',
            'http {',
            '  access_log off;',
            `  ${temp('client_body')} ${temp('proxy')} ${temp('fastcgi')} ${temp('uwsgi')} ${temp('scgi')}`,
            '  server {',
            `    listen ${V4}:${port} proxy_protocol;`,
            '    default_type text/plain;',
            '    return 200 "$proxy_protocol_addr:$proxy_protocol_port $proxy_protocol_server_addr:$proxy_protocol_server_port";',
            '  }',
            '}',
            '',
          ].join('\n'),
        );
        await runDaemon(
          t,
          [nginx, '-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', log],
          [{ host: V4, port }],
          log,
        );
        await checkConsumer(t, engine, port, ['v1', 'v2']);
      },
    );
  });
}

test('the command: --proxy-protocol sets it on -p TCP mappings, refuses UDP ones; config files take proxyProtocol', () => {
  const tcp = parseArgs(['--proxy-protocol', 'v2', '-p', '8080:127.0.0.1:80']);
  assert.equal(tcp.mappings[0].options.proxyProtocol, 'v2');
  assert.throws(
    () => parseArgs(['--proxy-protocol', 'v2', '-p', '53:127.0.0.1:53/udp']),
    /--proxy-protocol v2: applies to tcp mappings, and there are none/,
  );
  assert.throws(
    () => parseArgs(['--proxy-protocol', 'v3', '-p', '8080:127.0.0.1:80']),
    /proxyProtocol must be one of 'v1', 'v2', got "v3"/,
  );
  const config = JSON.stringify([
    { listen: { port: 1 }, target: { host: V4, port: 2 }, proxyProtocol: 'v1' },
  ]);
  assert.equal(parseArgs(['-c', 'x.json'], () => config).mappings[0].options.proxyProtocol, 'v1');
  const udp = JSON.stringify([
    { proto: 'udp', listen: { port: 1 }, target: { host: V4, port: 2 }, proxyProtocol: 'v1' },
  ]);
  assert.throws(() => parseArgs(['-c', 'x.json'], () => udp), /\[0\]\.proxyProtocol applies to TCP/);
});

// ---------------------------------------------------------------------------------------------
// acceptProxyProtocol: a PROXY header read from the client, and sent onwards (chaining).
// ---------------------------------------------------------------------------------------------

/** Connects, writes `chunks` (a pause between them), then FIN; resolves what came back, or the error. */
async function sendRaw(port, chunks, { gapMs = 0, host = V4 } = {}) {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  const outcome = new Promise((resolve) => {
    const data = [];
    socket.on('data', (c) => data.push(c));
    socket.on('end', () => resolve({ data: Buffer.concat(data).toString('latin1') }));
    socket.on('error', (error) => resolve({ error: error.code }));
    socket.on('close', () => resolve({ closed: true }));
  });
  await withTimeout(
    new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject)),
    5000,
    'connect',
  );
  const ends = { address: socket.localAddress, port: socket.localPort };
  for (const chunk of chunks) {
    if (socket.destroyed) break;
    socket.write(chunk);
    if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
  }
  if (!socket.destroyed) socket.end();
  const result = await withTimeout(outcome, 10000, 'outcome');
  socket.destroy();
  return { ...result, ends };
}

function v2Local() {
  return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
}

/** v2 with a NOOP TLV after the addresses (a receiver skips TLVs by the length). */
function v2WithTlv(family, src, dst, sp, dp) {
  const h = v2Header(family, src, dst, sp, dp);
  const tlv = Buffer.from([0x04, 0x00, 0x03, 1, 2, 3]);
  const out = Buffer.concat([h, tlv]);
  out.writeUInt16BE(h.length - 16 + tlv.length, 14);
  return out;
}

for (const engine of ENGINES) {
  describe(`acceptProxyProtocol [${engine}]`, () => {
    test('the client header is read, not forwarded, and its addresses go onwards (v1 in, v2 out and v2 in, v1 out)', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const v2out = await addMapping(proxy, target.port, { acceptProxyProtocol: true, proxyProtocol: 'v2' });
      const payload = randomPayload(100_000);
      const r1 = await sendRaw(v2out.listen.port, [
        Buffer.concat([Buffer.from('PROXY TCP4 198.51.100.7 203.0.113.9 40000 443\r\n'), payload]),
      ]);
      assert.equal(r1.data, 'ok');
      const expected1 = v2Header(4, '198.51.100.7', '203.0.113.9', 40000, 443);
      assert.deepEqual(target.received[0].subarray(0, expected1.length), expected1);
      assert.ok(target.received[0].subarray(expected1.length).equals(payload), 'payload byte for byte');

      const v1out = await addMapping(proxy, target.port, { acceptProxyProtocol: true, proxyProtocol: 'v1' });
      const r2 = await sendRaw(v1out.listen.port, [
        Buffer.concat([v2WithTlv(6, '2001:db8::7', '2001:db8:0:1::9', 1, 65535), Buffer.from('data')]),
      ]);
      assert.equal(r2.data, 'ok');
      assert.equal(
        target.received[1].toString('latin1'),
        'PROXY TCP6 2001:db8::7 2001:db8:0:1::9 1 65535\r\ndata',
      );

      for (const m of [v2out, v1out]) {
        const st = await waitIdle(proxy, m);
        assert.equal(st.proxyHeaders.received, 1, show(st.connections));
        assert.equal(st.proxyHeaders.sent, 1);
        assert.equal(st.proxyHeaders.rejected, 0);
      }
    });

    test('without proxyProtocol the header is only stripped; a header sent a few bytes at a time is waited for', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port, { acceptProxyProtocol: true });
      const line = 'PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n';
      const chunks = [line.slice(0, 3), line.slice(3, 20), line.slice(20, -1), line.slice(-1) + 'after'];
      const r = await sendRaw(m.listen.port, chunks, { gapMs: 30 });
      assert.equal(r.data, 'ok');
      assert.equal(target.received[0].toString('latin1'), 'after');
    });

    test('v2 LOCAL and v1 UNKNOWN: the real endpoints go onwards', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port, { acceptProxyProtocol: true, proxyProtocol: 'v1' });
      const a = await sendRaw(m.listen.port, [Buffer.concat([v2Local(), Buffer.from('L')])]);
      assert.equal(
        target.received[0].toString('latin1'),
        `PROXY TCP4 127.0.0.1 127.0.0.1 ${a.ends.port} ${m.listen.port}\r\nL`,
      );
      const b = await sendRaw(m.listen.port, ['PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nU']);
      assert.equal(
        target.received[1].toString('latin1'),
        `PROXY TCP4 127.0.0.1 127.0.0.1 ${b.ends.port} ${m.listen.port}\r\nU`,
      );
    });

    const BAD = [
      ['not a PROXY header', ['GET / HTTP/1.1\r\nHost: x\r\n\r\n']],
      ['v1 with a lone LF', ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n']],
      ['v1 with a leading zero', ['PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n']],
      ['v1 with two spaces', ['PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n']],
      ['v1 port out of range', ['PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n']],
      ['v1 IPv6 address under TCP4', ['PROXY TCP4 ::1 ::1 1 2\r\n']],
      ['v1 without CRLF in 107 bytes', [`PROXY TCP6 ${'a'.repeat(120)}`]],
      ['v2 version 1', [Buffer.concat([V2_SIGNATURE, Buffer.from([0x11, 0x11, 0, 12]), Buffer.alloc(12)])]],
      ['v2 command 2', [Buffer.concat([V2_SIGNATURE, Buffer.from([0x22, 0x11, 0, 12]), Buffer.alloc(12)])]],
      ['v2 family 0x41', [Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x41, 0, 12]), Buffer.alloc(12)])]],
      [
        'v2 TCP4 with 8 address bytes',
        [Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0, 8]), Buffer.alloc(8)])],
      ],
      [
        'v2 longer than 536 bytes',
        [Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0x02, 0x09]), Buffer.alloc(600)])],
      ],
      ['FIN before the header is complete', ['PROXY TCP4 1.2.3.4']],
    ];
    test('bad, oversized and truncated headers: the client is reset, counted, and the target never connected', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port, { acceptProxyProtocol: true, proxyProtocol: 'v2' });
      for (const [what, chunks] of BAD) {
        const r = await sendRaw(m.listen.port, chunks);
        assert.ok(r.error === 'ECONNRESET' || r.closed, `${what}: ${show(r)}`);
        assert.equal(r.data, undefined, `${what}: nothing answered`);
      }
      const st = await waitIdle(proxy, m);
      assert.equal(st.proxyHeaders.rejected, BAD.length, show(st.connections));
      assert.equal(st.proxyHeaders.received, 0);
      assert.equal(st.proxyHeaders.sent, 0);
      assert.equal(st.connections.failed, 0);
      assert.equal(target.connectionCount, 0, 'the target was never connected');
    });

    test('a header that never completes is reset after 3 s, while other clients are served', async (t) => {
      const target = await startRawTarget();
      t.after(() => closeServers(target));
      const proxy = await withProxy(t, engine);
      const m = await addMapping(proxy, target.port, { acceptProxyProtocol: true });
      const slow = net.connect({ port: m.listen.port, host: V4 });
      const start = Date.now();
      const gone = new Promise((resolve) => {
        slow.on('error', (e) => resolve(e.code));
        slow.on('close', () => resolve('close'));
      });
      slow.write('PROXY TCP4 1.2.3.4');
      // Meanwhile the same thread serves others at once.
      for (let i = 0; i < 5; i++) {
        const r = await sendRaw(m.listen.port, [`PROXY TCP4 10.0.0.${i} 10.0.0.254 ${1000 + i} 80\r\nq`]);
        assert.equal(r.data, 'ok');
      }
      assert.ok(Date.now() - start < 2500, 'the others were not held up');
      const how = await withTimeout(gone, 6000, 'reset of the slow client');
      const ms = Date.now() - start;
      assert.ok(how === 'ECONNRESET' || how === 'close', how);
      assert.ok(ms >= 2900 && ms < 5500, `reset after ${ms} ms`);
      const st = await waitIdle(proxy, m);
      assert.equal(st.proxyHeaders.rejected, 1);
      assert.equal(st.proxyHeaders.received, 5);
    });

    test(
      'behind HAProxy send-proxy-v2: the address HAProxy saw reaches the target',
      { skip: haproxy ? false : 'haproxy is not installed (apt-get install haproxy)' },
      async (t) => {
        const target = await startRawTarget();
        t.after(() => closeServers(target));
        const proxy = await withProxy(t, engine);
        const m = await addMapping(proxy, target.port, { acceptProxyProtocol: true, proxyProtocol: 'v1' });
        const dir = mkdtempSync(path.join(os.tmpdir(), 'psp-haproxy-'));
        t.after(() => rmSync(dir, { recursive: true, force: true }));
        const port = await freePort();
        const file = path.join(dir, 'haproxy.cfg');
        writeFileSync(
          file,
          [
            'defaults',
            '  mode tcp',
            '  timeout connect 5s',
            '  timeout client 10s',
            '  timeout server 10s',
            'listen lb',
            `  bind ${V4}:${port}`,
            `  server portsplice ${V4}:${m.listen.port} send-proxy-v2`,
            '',
          ].join('\n'),
        );
        await runDaemon(t, [haproxy, '-db', '-q', '-f', file], [{ host: V4, port }]);
        const r = await sendRaw(port, ['through haproxy'], {});
        assert.equal(r.data, 'ok');
        // runDaemon's readiness probes went through HAProxy too (as connections that carry
        // no data, in any order): look for ours.
        const ours = await waitFor(
          () => target.received.find((b) => b.toString('latin1').endsWith('through haproxy')),
          { what: 'the target got the connection' },
        );
        assert.equal(
          ours.toString('latin1'),
          `PROXY TCP4 127.0.0.1 127.0.0.1 ${r.ends.port} ${port}\r\nthrough haproxy`,
        );
      },
    );
  });
}
