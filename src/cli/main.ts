#!/usr/bin/env node
/**
 * The `portsplice` command: forwards many TCP/UDP ports from one process. See `--help`, and
 * run.ts for its life cycle.
 */
import { run } from './run.js';

// A reader that went away (`portsplice | head`) must not crash the forwarder.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
}

run(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`portsplice: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
