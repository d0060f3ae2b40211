// Forwards one TCP port and prints its counters every few seconds; Ctrl-C stops it.
//
//   node examples/forward.mjs [LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT [--engine stream]
import { parseArgs } from 'node:util';
import { createProxy } from 'portsplice';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { engine: { type: 'string' }, threads: { type: 'string' } },
});
if (positionals.length !== 2) {
  console.error('usage: node examples/forward.mjs [LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT');
  process.exit(2);
}

/** Splits "host:port", "[v6]:port" or "port" into an endpoint. */
function endpoint(text, defaultHost) {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (match) return { host: match[1] ?? match[2], port: Number(match[3]) };
  if (/^\d+$/.test(text) && defaultHost) return { host: defaultHost, port: Number(text) };
  throw new Error(`expected HOST:PORT, got "${text}"`);
}

const proxy = createProxy({
  ...(values.engine ? { engine: values.engine } : {}),
  ...(values.threads ? { threads: Number(values.threads) } : {}),
});
const mapping = await proxy.add({
  proto: 'tcp',
  listen: endpoint(positionals[0], '0.0.0.0'),
  target: endpoint(positionals[1]),
});
console.log(
  `${proxy.engine}: forwarding ${mapping.listen.host}:${mapping.listen.port} -> ` +
    `${mapping.target.host}:${mapping.target.port} (Ctrl-C to stop)`,
);

const timer = setInterval(() => {
  const [m] = proxy.stats().mappings;
  console.log(
    `connections accepted ${m.connections.accepted} active ${m.connections.active} ` +
      `failed ${m.connections.failed}; bytes to target ${m.bytes.toTarget} to client ${m.bytes.toClient} ` +
      `(spliced ${m.bytes.spliced}, copied ${m.bytes.copied})`,
  );
}, 5000);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    clearInterval(timer);
    await proxy.close();
    process.exit(0);
  });
}
