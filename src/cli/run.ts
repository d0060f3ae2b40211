/**
 * The CLI's life: parse, open every port (or none), report readiness on docker-proxy's status
 * pipe, show stats, and on SIGTERM/SIGINT stop accepting and drain before exiting.
 */
import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Server } from 'node:http';
import { createProxy } from '../index.js';
import type { Mapping, Proxy } from '../types.js';
import { runDockerProxy } from './docker-proxy.js';
import { HELP, UsageError, formatEndpoint, parseArgs, type CliOptions, type MappingSpec } from './args.js';
import { startJsonLines, startLiveView, startupLine, type View } from './view.js';

/** Where the CLI writes; `process.stdout`/`process.stderr` in real use. */
export interface Streams {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number; rows?: number };
  stderr: NodeJS.WritableStream;
}

/** Seconds between JSON lines when `--interval` is not given. */
export const DEFAULT_JSON_INTERVAL = 10;
/** Seconds between live-view refreshes when `--interval` is not given. */
export const DEFAULT_LIVE_INTERVAL = 1;
/** How long past the drain timeout shutdown may take before the CLI gives up and exits 1. */
const SHUTDOWN_GRACE_MS = 5000;

export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * docker-proxy's status pipe: when its parent passes a pipe as fd 3, it expects `0\n` once
 * the proxy listens, or `1\n` and the error text. (Node's child_process passes a socket pair
 * for a 'pipe', so a socket counts too; a Node process started without fd 3 has its own
 * epoll descriptor there, which is neither.)
 */
export class StatusPipe {
  #fd: number | undefined;

  constructor(fd = 3) {
    try {
      const st = fs.fstatSync(fd);
      if (st.isFIFO() || st.isSocket()) this.#fd = fd;
    } catch {
      this.#fd = undefined;
    }
  }

  get open(): boolean {
    return this.#fd !== undefined;
  }

  /** Writes the status once and closes the pipe; later calls do nothing. */
  report(ok: boolean, message = ''): void {
    const fd = this.#fd;
    if (fd === undefined) return;
    try {
      fs.writeSync(fd, ok ? '0\n' : `1\n${message}`);
    } catch {
      // The parent went away: nothing to tell.
    }
    this.close();
  }

  /** Closes the pipe without a status (for --help and --version, which start nothing). */
  close(): void {
    const fd = this.#fd;
    if (fd === undefined) return;
    this.#fd = undefined;
    try {
      fs.closeSync(fd);
    } catch {
      // Already closed.
    }
  }
}

function describeMapping(spec: MappingSpec): string {
  const { proto, listen, target } = spec.options;
  return (
    `${proto} ${formatEndpoint(listen.host ?? '0.0.0.0', listen.port)} -> ` +
    `${formatEndpoint(target.host, target.port)}`
  );
}

type MetricsModule = typeof import('./metrics.js');

/**
 * metrics.ts, loaded only for --metrics: prom-client is an optional dependency, so that
 * library users (and `npm install --omit=optional`) need not install it.
 */
async function loadMetrics(): Promise<MetricsModule> {
  try {
    return await import('./metrics.js');
  } catch (err) {
    if (
      (err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' &&
      /prom-client/.test(errorText(err))
    ) {
      throw new Error('--metrics needs the optional dependency prom-client: npm install prom-client', {
        cause: err,
      });
    }
    throw err;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Runs the CLI with `argv` (without node and the script); resolves with the exit status. */
export async function run(argv: readonly string[], io: Streams = process): Promise<number> {
  const status = new StatusPipe();
  const version = packageVersion();
  if (argv[0] === 'docker-proxy') {
    status.close();
    return runDockerProxy(argv.slice(1), io);
  }

  let options: CliOptions;
  try {
    options = parseArgs(argv, (file) => fs.readFileSync(file, 'utf8'));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    io.stderr.write(`portsplice: ${err.message}\n\n${HELP}\n`);
    status.report(false, err.message);
    return 2;
  }
  if (options.help) {
    io.stdout.write(`${HELP}\n`);
    status.close();
    return 0;
  }
  if (options.version) {
    io.stdout.write(`portsplice ${version}\n`);
    status.close();
    return 0;
  }

  // Signals: the first one stops (also during startup), a second one exits at once.
  let signalled: NodeJS.Signals | undefined;
  let wake!: () => void;
  const stopRequested = new Promise<void>((resolve) => (wake = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled !== undefined) {
      io.stderr.write(`portsplice: ${signal} again, exiting now\n`);
      process.exit(128 + (osConstants.signals[signal] ?? 0));
    }
    signalled = signal;
    wake();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let proxy: Proxy;
  try {
    proxy = createProxy({
      ...(options.engine !== undefined && { engine: options.engine }),
      ...(options.threads !== undefined && { threads: options.threads }),
      ...(options.pipeSize !== undefined && { pipeSize: options.pipeSize }),
      ...(options.maxPipes !== undefined && { maxPipes: options.maxPipes }),
    });
  } catch (err) {
    const message = `cannot start the ${options.engine ?? 'default'} engine: ${errorText(err)}`;
    io.stderr.write(`portsplice: ${message}\n`);
    status.report(false, message);
    return 1;
  }

  // Open everything, or nothing: on the first failure, close what was opened.
  let metricsServer: Server | undefined;
  let metrics: MetricsModule | undefined;
  const mappings: Mapping[] = [];
  try {
    if (options.metrics) {
      const { host, port } = options.metrics;
      metrics = await loadMetrics();
      try {
        metricsServer = await metrics.startMetricsServer(metrics.createMetrics(proxy, version), host, port);
      } catch (err) {
        throw new Error(`cannot serve metrics on ${formatEndpoint(host, port)}: ${errorText(err)}`, {
          cause: err,
        });
      }
    }
    const total = options.mappings.length;
    for (let i = 0; i < total && signalled === undefined; i++) {
      const spec = options.mappings[i]!;
      try {
        mappings.push(await proxy.add(spec.options));
      } catch (err) {
        const which = total > 1 ? `mapping ${i + 1} of ${total}, ` : '';
        throw new Error(
          `cannot listen on ${describeMapping(spec)} (${which}${spec.source}): ${errorText(err)}`,
          {
            cause: err,
          },
        );
      }
    }
  } catch (err) {
    const message = errorText(err);
    await Promise.allSettled([
      proxy.close(),
      metricsServer ? metrics!.stopMetricsServer(metricsServer) : Promise.resolve(),
    ]);
    io.stderr.write(`portsplice: ${message}\n`);
    status.report(false, message);
    return 1;
  }

  let view: View | undefined;
  const live = io.stdout.isTTY === true && process.env.TERM !== 'dumb' && !options.json;
  if (signalled === undefined) {
    status.report(true);
    if (options.json) {
      view = startJsonLines(proxy, io.stdout, (options.interval ?? DEFAULT_JSON_INTERVAL) * 1000);
    } else if (live) {
      view = startLiveView(proxy, io.stdout, (options.interval ?? DEFAULT_LIVE_INTERVAL) * 1000, version);
    } else {
      for (const m of mappings) io.stdout.write(`${startupLine(m)}\n`);
      if (metricsServer)
        io.stdout.write(`portsplice: metrics on http://${metrics!.serverAddress(metricsServer)}/metrics\n`);
    }
  } else {
    status.report(false, `stopped by ${signalled} while starting`);
  }

  await stopRequested;

  // Stop accepting at once; open connections get the drain timeout to finish.
  let open = 0;
  // UDP flows have no end to wait for: only TCP connections drain.
  for (const m of proxy.stats().mappings) if (m.proto === 'tcp') open += m.connections.active;
  view?.stop();
  const drainMs = Math.round(options.drainTimeout * 1000);
  if (live) {
    io.stderr.write(
      `portsplice: ${signalled}: stopped accepting; ` +
        (open > 0 && drainMs > 0
          ? `waiting up to ${options.drainTimeout} s for ${open} open connection${open === 1 ? '' : 's'} ` +
            `(${signalled === 'SIGINT' ? 'Ctrl-C' : signalled} again to quit now)\n`
          : 'exiting\n'),
    );
  }
  const watchdog = setTimeout(() => {
    io.stderr.write(
      `portsplice: shutdown did not finish within ${drainMs + SHUTDOWN_GRACE_MS} ms; exiting\n`,
    );
    process.exit(1);
  }, drainMs + SHUTDOWN_GRACE_MS);
  try {
    await Promise.all([
      proxy.close({ drainTimeoutMs: drainMs }),
      metricsServer ? metrics!.stopMetricsServer(metricsServer) : Promise.resolve(),
    ]);
  } catch (err) {
    io.stderr.write(`portsplice: error while stopping: ${errorText(err)}\n`);
    return 1;
  } finally {
    clearTimeout(watchdog);
  }
  return 0;
}
