#!/usr/bin/env node
// What a published port range costs with each userland proxy, measured under a real dockerd:
// one container publishing `docker run -p 8000-8099:8000-8099 -p 8000-8099:8000-8099/udp`,
// once with portsplice-docker-proxy and once with Docker's docker-proxy, each under the same
// dockerd setup (test/dockerd-helpers.mjs: a namespace, directories and cgroups of its own,
// all removed at the end). Prints the number of proxy processes, their total resident (RSS)
// and proportional (PSS, /proc/PID/smaps_rollup: shared pages divided among the processes
// that map them) memory, and how long `docker run` took to start them.
//
//   sudo node bench/docker-ports.mjs [--ports 100] [--base 8000] [--json]
import { realpathSync, existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';

import { dockerProxyPath } from '../dist/index.js';
import { IMAGE, dockerdSkipReason, memoryKb, startDockerd, which } from '../test/dockerd-helpers.mjs';

const { values: opts } = parseArgs({
  options: {
    ports: { type: 'string', default: '100' },
    base: { type: 'string', default: '8000' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opts.help) {
  process.stdout.write('usage: node bench/docker-ports.mjs [--ports N] [--base PORT] [--json]\n');
  process.exit(0);
}
const ports = Number(opts.ports);
const base = Number(opts.base);
if (!Number.isInteger(ports) || ports < 1 || ports > 1000) {
  process.stderr.write('--ports: an integer from 1 to 1000\n');
  process.exit(2);
}
if (!Number.isInteger(base) || base < 1 || base + ports - 1 > 65535) {
  process.stderr.write('--base: a port such that base + ports - 1 <= 65535\n');
  process.exit(2);
}

const skip = dockerdSkipReason();
if (skip) {
  process.stderr.write(`docker-ports: cannot run: ${skip}\n`);
  process.exit(1);
}

const candidates = [
  [process.env.PORTSPLICE_DOCKER_PROXY ? dockerProxyPath : 'portsplice-docker-proxy', dockerProxyPath],
  ['docker-proxy', which('docker-proxy')],
];
const proxies = candidates.filter(([name, file]) => {
  if (file && existsSync(file)) return true;
  process.stderr.write(`docker-ports: ${name} not found, skipped\n`);
  return false;
});

const range = `${base}-${base + ports - 1}`;
const sum = (list, key) => list.reduce((a, p) => a + p[key], 0);

async function measure(name, file, label) {
  const d = await startDockerd({ proxyPath: realpathSync(file), label });
  try {
    const started = Date.now();
    // busybox's echo server on the first port, to check that the proxies forward.
    await d.run([
      '-p',
      `${range}:${range}`,
      '-p',
      `${range}:${range}/udp`,
      IMAGE,
      'nc',
      '-ll',
      '-p',
      String(base),
      '-e',
      'cat',
    ]);
    const runMs = Date.now() - started;
    const payload = randomBytes(4096);
    let echoed = false;
    for (let attempt = 0; attempt < 50 && !echoed; attempt++) {
      const r = await d.client({ mode: 'tcp', host: '127.0.0.1', port: base }, payload);
      echoed = r.code === 0 && r.stdout.equals(payload);
      if (!echoed) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (!echoed) throw new Error(`${name}: no echo through 127.0.0.1:${base}`);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // let start-up allocations settle
    const list = d.proxies().map((p) => ({ ...p, ...memoryKb(p.pid) }));
    const wrong = list.filter((p) => p.exe !== realpathSync(file));
    if (wrong.length) throw new Error(`${name}: dockerd ran ${wrong[0].exe}`);
    const rows = ['tcp', 'udp'].map((proto) => {
      const of = list.filter((p) => p.proto === proto);
      return { proxy: name, proto, processes: of.length, rssKb: sum(of, 'rss'), pssKb: sum(of, 'pss') };
    });
    rows.push({
      proxy: name,
      proto: 'all',
      processes: list.length,
      rssKb: sum(list, 'rss'),
      pssKb: sum(list, 'pss'),
    });
    const rmStarted = Date.now();
    await d.docker(['rm', '-f', (await d.docker(['ps', '-q'])).stdout.trim()], { timeoutMs: 120000 });
    return { rows, runMs, rmMs: Date.now() - rmStarted, dockerd: d.serverVersion };
  } finally {
    d.cleanup();
  }
}

const results = [];
for (const [i, [name, file]] of proxies.entries()) {
  process.stderr.write(
    `docker-ports: ${name}: docker run -p ${range}:${range} -p ${range}:${range}/udp ...\n`,
  );
  results.push({ name, file, ...(await measure(name, file, `b${i}`)) });
}

if (opts.json) {
  process.stdout.write(`${JSON.stringify({ ports, base, results }, null, 2)}\n`);
} else {
  const mb = (kb) => (kb / 1024).toFixed(1);
  const lines = [
    `${ports} ports, tcp and udp, under dockerd ${results[0]?.dockerd} (one proxy per port, protocol and family: 0.0.0.0 and ::)`,
    '',
    '| proxy | proto | processes | RSS total MB | PSS total MB | RSS per proxy kB | PSS per proxy kB |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of results) {
    for (const row of r.rows) {
      lines.push(
        `| ${row.proxy} | ${row.proto} | ${row.processes} | ${mb(row.rssKb)} | ${mb(row.pssKb)} | ${Math.round(row.rssKb / row.processes)} | ${Math.round(row.pssKb / row.processes)} |`,
      );
    }
  }
  lines.push('', '| proxy | docker run (starts them all) s | docker rm -f s |', '| --- | ---: | ---: |');
  for (const r of results)
    lines.push(`| ${r.name} | ${(r.runMs / 1000).toFixed(2)} | ${(r.rmMs / 1000).toFixed(2)} |`);
  process.stdout.write(`${lines.join('\n')}\n`);
}
