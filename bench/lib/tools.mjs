// The established load tools: iperf3 (bulk TCP, UDP) and wrk (HTTP keep-alive requests and
// new connections), run with a time limit, inside the client namespace when there is one.
import { fileURLToPath } from 'node:url';
import { run, which } from './sys.mjs';

const WRK_SCRIPT = fileURLToPath(new URL('./wrk-json.lua', import.meta.url));

/** Which tools are installed, with how to get the missing ones. */
export function findTools() {
  const tools = {
    iperf3: { path: which('iperf3'), for: 'bulk TCP and UDP', install: 'apt-get install iperf3' },
    wrk: { path: which('wrk'), for: 'HTTP keep-alive and new connections', install: 'apt-get install wrk' },
    nginx: {
      path: which('nginx'),
      for: 'HTTP target (else a Node net server)',
      install: 'apt-get install nginx-light',
    },
    ip: { path: which('ip'), for: 'network namespaces', install: 'apt-get install iproute2' },
    iptables: { path: which('iptables'), for: 'kernel NAT (DNAT)', install: 'apt-get install iptables' },
    ss: { path: which('ss'), for: 'waiting for listeners', install: 'apt-get install iproute2' },
    haproxy: { path: which('haproxy'), for: 'the HAProxy method', install: 'apt-get install haproxy' },
    socat: { path: which('socat'), for: 'the socat method', install: 'apt-get install socat' },
    'redis-benchmark': {
      path: which('redis-benchmark'),
      for: 'the churn test (client)',
      install: 'apt-get install redis-tools',
    },
    'redis-cli': {
      path: which('redis-cli'),
      for: 'the churn test (counts at the target)',
      install: 'apt-get install redis-tools',
    },
    'redis-server': {
      path: which('redis-server'),
      for: 'the churn test (target)',
      install: 'apt-get install redis-server',
    },
  };
  return tools;
}

/** Bulk TCP with iperf3 (client sends), `streams` parallel streams. */
export async function iperfTcp({ ns, host, port, seconds, streams = 1 }) {
  const argv = ['iperf3', '-c', host, '-p', String(port), '-t', String(seconds), '-J'];
  argv.push('--connect-timeout', '3000', '-P', String(streams));
  const out = await run(argv, { ns, timeoutMs: (seconds + 20) * 1000 });
  const json = parseIperf(out);
  const received = json.end.sum_received;
  return {
    tool: 'iperf3',
    streams,
    bytes: received.bytes,
    seconds: received.seconds,
    gbps: received.bits_per_second / 1e9,
    retransmits: json.end.sum_sent?.retransmits ?? null,
  };
}

/** UDP with iperf3, sending as fast as it can (-b 0) datagrams of `length` bytes. */
export async function iperfUdp({ ns, host, port, seconds, length = 1400 }) {
  const argv = ['iperf3', '-c', host, '-p', String(port), '-t', String(seconds), '-J', '-u', '-b', '0'];
  argv.push('-l', String(length), '--connect-timeout', '3000');
  const out = await run(argv, { ns, timeoutMs: (seconds + 20) * 1000 });
  const json = parseIperf(out);
  const sent = json.end.sum_sent ?? json.end.sum;
  const received = json.end.sum_received ?? json.end.sum;
  const delivered = received.packets - received.lost_packets;
  return {
    tool: 'iperf3',
    length,
    seconds: received.seconds,
    sentPps: sent.packets / sent.seconds,
    deliveredPps: delivered / received.seconds,
    deliveredGbps: (delivered * length * 8) / received.seconds / 1e9,
    lossPct: received.packets > 0 ? (received.lost_packets / received.packets) * 100 : 100,
  };
}

function parseIperf(out) {
  let json;
  try {
    json = JSON.parse(out.stdout);
  } catch {
    throw new Error(
      `iperf3 failed (exit ${out.code}${out.timedOut ? ', timed out' : ''}): ${out.stderr.trim()}`,
    );
  }
  if (json.error) throw new Error(`iperf3: ${json.error}`);
  return json;
}

/**
 * HTTP GETs with wrk: keep-alive (the default) or a new connection per request (`close`).
 * Latency percentiles come from wrk's own histogram of every request.
 */
export async function wrkHttp({ ns, host, port, seconds, connections, close = false, threads = 1 }) {
  const argv = [
    'wrk',
    '-t',
    String(threads),
    '-c',
    String(connections),
    '-d',
    `${seconds}s`,
    '--timeout',
    '5s',
  ];
  argv.push('-s', WRK_SCRIPT);
  if (close) argv.push('-H', 'Connection: close');
  argv.push(`http://${host}:${port}/`);
  const out = await run(argv, { ns, timeoutMs: (seconds + 20) * 1000 });
  const line = out.stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (!line)
    throw new Error(`wrk failed (exit ${out.code}): ${(out.stderr || out.stdout).trim().slice(-300)}`);
  const json = JSON.parse(line.slice('WRKJSON '.length));
  const errors = Object.values(json.errors).reduce((a, b) => a + b, 0);
  const s = json.durationUs / 1e6;
  return {
    tool: 'wrk',
    threads,
    connections,
    requests: json.requests,
    seconds: s,
    rps: json.requests / s,
    errors,
    p50Ms: json.latencyUs.p50 / 1000,
    p90Ms: json.latencyUs.p90 / 1000,
    p99Ms: json.latencyUs.p99 / 1000,
    p999Ms: json.latencyUs.p999 / 1000,
    maxMs: json.latencyUs.max / 1000,
  };
}
