/**
 * The CLI's life: parse, open every port (or none), report readiness on docker-proxy's status
 * pipe, show stats, and on SIGTERM/SIGINT stop accepting and drain before exiting.
 */
import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Server } from 'node:http';
import { createProxy } from '../index.js';
import type { DrainResult, PortspliceProxy } from '../types.js';
import { runDockerProxy } from './docker-proxy.js';
import { parseArgs, type CliOptions } from './args.js';
import { formatEndpoint } from './endpoint.js';
import { HELP } from './help.js';
import { logFailures } from './failure-log.js';
import { SystemdNotifier } from './notify.js';
import type { Streams } from './streams.js';
import { DEFAULT_JSON_INTERVAL, DEFAULT_LIVE_INTERVAL, OPTIONS } from './options.js';
import { mappingLabel, mappingLabels } from './groups.js';
import { applyMappings, mappingKeys, openSpec, type LiveMapping } from './reload.js';
import { describeSpec } from './spec.js';
import { UsageError } from './where.js';
import { describeMapping, startJsonLines, startLiveView, startupLine, type View } from './view.js';

/** How long past the drain timeout shutdown may take before the CLI gives up and exits 1. */
const SHUTDOWN_GRACE_MS = 5000;

function packageVersion(): string {
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
class StatusPipe {
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

/**
 * What /healthz answers: healthy while running with every mapping of the config listening
 * (`open`: the ids in the engine's stats); 503 while starting, stopping, or with one missing.
 */
export function healthOf(
  phase: 'starting' | 'running' | 'stopping',
  signal: string | undefined,
  configured: number,
  live: readonly LiveMapping[],
  open: ReadonlySet<number>,
): { ok: boolean; text: string } {
  if (phase === 'stopping') return { ok: false, text: `stopping (${signal}): not accepting connections` };
  const listens = (m: LiveMapping): boolean => m.mappings.every((x) => open.has(x.id));
  const listening = live.filter(listens).length;
  if (phase === 'starting') {
    return { ok: false, text: `starting: ${listening} of ${configured} mappings listening` };
  }
  const missing = live.find((m) => !listens(m));
  if (missing) return { ok: false, text: `not listening: ${describeSpec(missing.spec)}` };
  return { ok: true, text: `ok: ${listening} mapping${listening === 1 ? '' : 's'} listening` };
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

  const readFile = (file: string) => fs.readFileSync(file, 'utf8');
  let options: CliOptions;
  try {
    options = parseArgs(argv, readFile);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    io.stderr.write(`portsplice: ${err.message}\nTry 'portsplice --help'.\n`);
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

  // Signals: the first SIGTERM/SIGINT stops (also during startup), a second one exits at once.
  // SIGHUP (whose default action would kill the process) reloads the config files.
  let signalled: NodeJS.Signals | undefined;
  let reloadWanted = false;
  let wakeMain: (() => void) | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled !== undefined) {
      io.stderr.write(`portsplice: ${signal} again, exiting now\n`);
      process.exit(128 + (osConstants.signals[signal] ?? 0));
    }
    signalled = signal;
    wakeMain?.();
  };
  const onHangup = () => {
    reloadWanted = true;
    wakeMain?.();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onHangup);

  const live = io.stdout.isTTY === true && process.env.TERM !== 'dumb' && !options.json;
  // Log lines (start, listeners, reloads, drains) go to stdout when it is a log (systemd's
  // journal, a file); to stderr when stdout has the live view or the JSON lines.
  const logStream = live || options.json ? io.stderr : io.stdout;
  const log = (line: string) => logStream.write(`portsplice: ${line}\n`);
  const notifier = new SystemdNotifier((message) => io.stderr.write(`portsplice: ${message}\n`));

  let proxy: PortspliceProxy;
  try {
    proxy = createProxy(options.proxy);
  } catch (err) {
    const message = `cannot start the ${options.proxy.engine ?? 'default'} engine: ${errorText(err)}`;
    io.stderr.write(`portsplice: ${message}\n`);
    status.report(false, message);
    return 1;
  }

  // Open everything, or nothing: on the first failure, close what was opened.
  let metricsServer: Server | undefined;
  let metrics: MetricsModule | undefined;
  let mappings: LiveMapping[] = [];
  let phase: 'starting' | 'running' | 'stopping' = 'starting';

  // The mapping labels (groups.ts), computed again when the mappings change. A mapping that a
  // reload removed keeps its label while it drains, so that a range does not fan out.
  let labels = new Map<number, string>();
  let labelled: { list: LiveMapping[]; length: number } | undefined;
  const currentLabels = (): ReadonlyMap<number, string> => {
    if (labelled?.list !== mappings || labelled.length !== mappings.length) {
      const open = new Set(proxy.stats().mappings.map((m) => m.id));
      const next = mappingLabels(mappings, options.metricsPerPort);
      for (const [id, label] of labels) if (!next.has(id) && open.has(id)) next.set(id, label);
      labels = next;
      labelled = { list: mappings, length: mappings.length };
    }
    return labels;
  };
  const health = () =>
    healthOf(
      phase,
      signalled,
      options.mappings.length,
      mappings,
      new Set(proxy.stats().mappings.map((m) => m.id)),
    );

  try {
    if (options.metrics) {
      const { host, port } = options.metrics;
      metrics = await loadMetrics();
      try {
        const registry = metrics.createMetrics(proxy, version, {
          label: (m) => currentLabels().get(m.id) ?? mappingLabel(m),
          nodejs: options.metricsNodejs,
          health,
        });
        metricsServer = await metrics.startMetricsServer(registry, host, port);
      } catch (err) {
        throw new Error(`cannot serve metrics on ${formatEndpoint(host, port)}: ${errorText(err)}`, {
          cause: err,
        });
      }
    }
    const total = options.mappings.length;
    const keys = mappingKeys(options.mappings);
    for (let i = 0; i < total && signalled === undefined; i++) {
      const spec = options.mappings[i]!;
      try {
        mappings.push({ key: keys[i]!, spec, mappings: await openSpec(proxy, spec, false, log) });
      } catch (err) {
        const which = total > 1 ? `mapping ${i + 1} of ${total}, ` : '';
        throw new Error(
          `cannot listen on ${describeSpec(spec)} (${which}${spec.source}): ${errorText(err)}`,
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

  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const listeners = () => mappings.flatMap((m) => m.mappings);
  const statusLine = () => `forwarding ${plural(listeners().length, 'mapping')} (${proxy.engine} engine)`;
  const drainMs = Math.round(options.drainTimeout * 1000);

  let view: View | undefined;
  let stopFailureLog: (() => void) | undefined;
  if (signalled === undefined) {
    phase = 'running';
    status.report(true);
    if (options.json) {
      view = startJsonLines(proxy, io.stdout, (options.interval ?? DEFAULT_JSON_INTERVAL) * 1000);
    } else if (live) {
      view = startLiveView(proxy, io.stdout, (options.interval ?? DEFAULT_LIVE_INTERVAL) * 1000, version, {
        labels: currentLabels,
        ...(io.stdin && { input: io.stdin }),
        // q in the view is Ctrl-C: the first stops and drains, a second exits at once.
        onQuit: () => onSignal('SIGINT'),
      });
    } else {
      for (const m of listeners()) io.stdout.write(`${startupLine(m)}\n`);
      if (metricsServer)
        io.stdout.write(`portsplice: metrics on http://${metrics!.serverAddress(metricsServer)}/metrics\n`);
    }
    // Failures to reach a target, rate-limited (the live view shows them as errors); from
    // before the line that says the command is ready, so that none after it is missed.
    if (!live) stopFailureLog = logFailures(proxy, log);
    if (!live) log(`started ${version}, pid ${process.pid}: ${statusLine()}`);
    notifier.ready(statusLine());
  } else {
    status.report(false, `stopped by ${signalled} while starting`);
  }

  /** SIGHUP: read the config again and apply the difference; a bad file changes nothing. */
  const reload = async (): Promise<void> => {
    if (options.configFiles.length === 0) {
      log('SIGHUP: no --config file to reload; nothing changed');
      return;
    }
    notifier.reloading();
    const files = options.configFiles.join(', ');
    let next: CliOptions;
    try {
      next = parseArgs(argv, readFile);
    } catch (err) {
      log(`SIGHUP: ${files} rejected, still running the previous config: ${errorText(err)}`);
      notifier.ready(statusLine());
      return;
    }
    // Every setting but the mappings (the option table's engine and command settings).
    const fixed = OPTIONS.filter((o) => o.scope === 'proxy' || o.scope === 'command')
      .filter((o) => {
        const [a, b] = o.scope === 'proxy' ? [next.proxy, options.proxy] : [next, options];
        return (
          JSON.stringify((a as Record<string, unknown>)[o.key]) !==
          JSON.stringify((b as Record<string, unknown>)[o.key])
        );
      })
      .map((o) => o.key);
    if (fixed.length > 0) log(`SIGHUP: changes to ${fixed.join(', ')} take effect on restart only`);
    try {
      const result = await applyMappings(proxy, mappings, next.mappings, drainMs, log);
      mappings = result.live;
      const { kept, added, removed, drained } = result.outcome;
      log(`SIGHUP: reloaded ${files}: ${kept} unchanged, ${added.length} added, ${removed.length} removed`);
      for (const m of added.flatMap((a) => a.mappings)) {
        log(`${startupLine(m).replace(/^portsplice: /, '')} (added)`);
      }
      for (const m of removed) {
        for (const mapping of m.mappings) {
          const open = proxy.stats().mappings.find((s) => s.id === mapping.id);
          const active = open?.proto === 'tcp' ? open.connections.active : 0;
          log(
            `mapping ${mapping.id} ${describeMapping(mapping)} removed: draining ${plural(active, 'open connection')}` +
              (active > 0 ? ` for up to ${options.drainTimeout} s` : ''),
          );
        }
      }
      void drained.then((results) => {
        for (const { mapping, reset } of results) {
          log(
            `mapping ${mapping.id} drained` +
              (reset > 0 ? `: ${plural(reset, 'connection')} reset at the timeout` : ''),
          );
        }
      });
    } catch (err) {
      mappings = (err as Error & { live?: LiveMapping[] }).live ?? mappings;
      log(`SIGHUP: ${files} not applied, still running the previous config: ${errorText(err)}`);
    }
    notifier.ready(statusLine());
  };

  // Wait for a stop, serving reloads in the meantime (one at a time, in arrival order).
  while (signalled === undefined) {
    if (reloadWanted) {
      reloadWanted = false;
      await reload();
      continue;
    }
    await new Promise<void>((resolve) => (wakeMain = resolve));
    wakeMain = undefined;
  }

  // Stop accepting at once; open connections get the drain timeout to finish.
  phase = 'stopping';
  let open = 0;
  // UDP flows have no end to wait for: only TCP connections drain.
  for (const m of proxy.stats().mappings) if (m.proto === 'tcp') open += m.connections.active;
  // The live view stays up during the drain with its countdown; the JSON lines end here.
  if (live && open > 0 && drainMs > 0) view?.draining?.(signalled, Date.now() + drainMs);
  else view?.stop();
  const waiting =
    open > 0 && drainMs > 0
      ? `waiting up to ${options.drainTimeout} s for ${plural(open, 'open connection')}`
      : 'no open connections';
  notifier.stopping(`${signalled}: draining, ${waiting}`);
  if (live) {
    // During a drain the view says it; a line on stderr would break its redraw in place.
    if (!(open > 0 && drainMs > 0)) io.stderr.write(`portsplice: ${signalled}: stopped accepting; exiting\n`);
  } else {
    log(`${signalled}: stopped accepting; ${waiting}`);
  }
  const watchdog = setTimeout(() => {
    io.stderr.write(
      `portsplice: shutdown did not finish within ${drainMs + SHUTDOWN_GRACE_MS} ms; exiting\n`,
    );
    process.exit(1);
  }, drainMs + SHUTDOWN_GRACE_MS);
  try {
    // The metrics (and the live view) stay up during the drain: /healthz says 503, the gauges
    // show it ending.
    let drained: DrainResult;
    try {
      drained = await proxy.close({ drainTimeoutMs: drainMs });
    } finally {
      if (live) view?.stop();
      if (metricsServer) await metrics!.stopMetricsServer(metricsServer);
    }
    if (!live) {
      log(
        `stopped` +
          (drained.reset > 0
            ? `: ${plural(drained.reset, 'connection')} still open at the timeout were reset`
            : ''),
      );
    }
  } catch (err) {
    io.stderr.write(`portsplice: error while stopping: ${errorText(err)}\n`);
    return 1;
  } finally {
    stopFailureLog?.();
    clearTimeout(watchdog);
    process.off('SIGHUP', onHangup);
    await notifier.flush();
  }
  return 0;
}
