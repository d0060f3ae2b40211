/**
 * The `portsplice` command line. Pure: it turns argument strings (and config files, read
 * through an injected function) into the mappings to open and the settings, or throws a
 * `UsageError` that says what is wrong and where. Nothing starts until parsing has succeeded.
 * The flags come from the table in options.ts; `-p` is publish.ts, config files config-file.ts.
 */
import { validateMapping, validateProxyOptions } from '../config.js';
import type { MappingOptions, ProxyOptions } from '../types.js';
import { parseConfig } from './config-file.js';
import { formatEndpoint } from './endpoint.js';
import { DEFAULT_DRAIN_TIMEOUT, OPTIONS, type CommandSettings, type OptionDef } from './options.js';
import { parsePortSpec } from './publish.js';
import type { MappingSpec } from './spec.js';
import { UsageError, located, quote } from './where.js';

export interface CliOptions extends CommandSettings {
  mappings: MappingSpec[];
  /** createProxy()'s options, from the flags and the config files (flags win). */
  proxy: ProxyOptions;
  help: boolean;
  version: boolean;
  /** The --config files, in order: what SIGHUP reads again. */
  configFiles: string[];
}

/** Reads a config file; injected so that parsing stays pure and testable. */
export type ReadFile = (path: string) => string;

const BY_NAME = new Map<string, OptionDef>(
  OPTIONS.flatMap((o) => [[o.flag, o] as const, ...(o.short ? [[o.short, o] as const] : [])]),
);

/** docker-proxy's flags: the drop-in binary takes them, with Go's rules; this command does not. */
const DOCKER_PROXY_FLAGS = new Set([
  'proto',
  'host-ip',
  'host-port',
  'container-ip',
  'container-port',
  'use-listen-fd',
]);

/** A flag without a value may still be given one after '=', as Go's flag package allows. */
function flagBoolean(text: string, shown: string): boolean {
  if (/^(1|t|true)$/i.test(text)) return true;
  if (/^(0|f|false)$/i.test(text)) return false;
  throw new UsageError(`${shown} takes no value (or true/false), got ${quote(text)}`);
}

/** A mapping's template of `proto` on which a flag's value is checked once, by the library. */
const TEMPLATE = (proto: 'tcp' | 'udp'): MappingOptions => ({
  proto,
  listen: { port: 0 },
  target: { host: '127.0.0.1', port: 1 },
});

/**
 * Parses the command line (without `node` and the script). Flags may be written `-name`,
 * `--name`, with the value as the next argument or after `=`, as Go's flag package accepts;
 * `-p` also takes its value attached (`-p8080:10.0.0.2:80`).
 */
export function parseArgs(argv: readonly string[], readFile?: ReadFile): CliOptions {
  const options: CliOptions = {
    mappings: [],
    proxy: {},
    json: false,
    metricsPerPort: false,
    metricsNodejs: false,
    drainTimeout: DEFAULT_DRAIN_TIMEOUT,
    help: false,
    version: false,
    configFiles: [],
  };
  const cliMappings: MappingSpec[] = [];
  const proxyFlags: ProxyOptions = {};
  const settingFlags: Partial<CommandSettings> = {};
  /** Per-mapping flags: the value, and the flag as given (for the messages). */
  const mappingFlags: { def: OptionDef & { scope: 'mapping' }; value: unknown; shown: string }[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      if (i + 1 < argv.length) throw new UsageError(`unexpected argument: ${quote(argv[i + 1])}`);
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      throw new UsageError(`unexpected argument: ${quote(arg)} (mappings are given with -p)`);
    }
    let name: string;
    let text: string | undefined;
    const attached = /^-p([\d[:].*)$/.exec(arg);
    if (attached) {
      name = 'p';
      text = attached[1];
    } else {
      const body = arg.startsWith('--') ? arg.slice(2) : arg.slice(1);
      const eq = body.indexOf('=');
      name = eq < 0 ? body : body.slice(0, eq);
      text = eq < 0 ? undefined : body.slice(eq + 1);
    }
    const shown = arg.startsWith('--') ? `--${name}` : `-${name}`;
    if (DOCKER_PROXY_FLAGS.has(name)) {
      throw new UsageError(
        `${shown} is docker-proxy's flag: run the drop-in portsplice-docker-proxy for those ` +
          `('portsplice docker-proxy' prints its path), or give the mapping as ` +
          `-p HOST_IP:HOST_PORT:CONTAINER_IP:CONTAINER_PORT[/udp]`,
      );
    }
    const def = BY_NAME.get(name);
    if (def === undefined) throw new UsageError(`unknown flag: ${arg.split('=')[0]}`);
    if (def.value === undefined) {
      // A flag without a value is a boolean; its parser gets "true" or "false".
      const on = text === undefined ? true : flagBoolean(text, shown);
      if (def.key === 'help') options.help = on;
      else if (def.key === 'version') options.version = on;
      text = String(on);
    } else if (text === undefined) {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('-') && next.length > 1)) {
        throw new UsageError(`flag ${shown} needs a value`);
      }
      text = next;
      i++;
    }
    const where = def.value === undefined ? shown : `${shown} ${text}`;
    switch (def.scope) {
      case 'cli':
        if (def.key === 'help' || def.key === 'version') break;
        if (def.key === 'publish') cliMappings.push(...parsePortSpec(text));
        else if (text === '') throw new UsageError(`flag ${shown} needs a file name`);
        else options.configFiles.push(text);
        break;
      case 'proxy': {
        const value = def.parse(text, shown);
        located(`${where}: `, () => validateProxyOptions({ [def.key]: value }, 'splice'));
        Object.assign(proxyFlags, { [def.key]: value });
        break;
      }
      case 'command':
        Object.assign(settingFlags, { [def.key]: def.parse(text, shown) });
        break;
      case 'mapping': {
        const value = def.parse(text, shown);
        // Checked now, once, on a mapping of its protocol: the error names the flag.
        located(`${where}: `, () => validateMapping({ ...TEMPLATE(def.proto ?? 'tcp'), [def.key]: value }));
        const at = mappingFlags.findIndex((f) => f.def === def);
        if (at >= 0) mappingFlags.splice(at, 1); // the last one wins, as with Go's flag package
        mappingFlags.push({ def, value, shown: where });
        break;
      }
    }
  }

  if (options.help || options.version) return options;

  // The config files first; flags given on the command line win over their settings.
  for (const file of options.configFiles) {
    if (!readFile) throw new UsageError('--config is not available here');
    let text: string;
    try {
      text = readFile(file);
    } catch (err) {
      throw new UsageError(`cannot read config file ${quote(file)}: ${(err as Error).message}`);
    }
    const config = parseConfig(text, file);
    options.mappings.push(...config.mappings);
    Object.assign(options.proxy, config.proxy);
    Object.assign(options, config.settings);
  }
  options.mappings.push(...cliMappings);
  Object.assign(options.proxy, proxyFlags);
  Object.assign(options, settingFlags);

  if (options.mappings.length === 0) {
    throw new UsageError('no mappings: give -p [HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT or --config FILE');
  }
  // Per-mapping flags: to each mapping of their protocol that does not set them itself.
  for (const { def, value, shown } of mappingFlags) {
    const targets = options.mappings.filter((m) => def.proto === undefined || m.options.proto === def.proto);
    if (targets.length === 0)
      throw new UsageError(`${shown}: applies to ${def.proto} mappings, and there are none`);
    for (const m of targets) {
      if (m.options[def.key] === undefined) m.options = { ...m.options, [def.key]: value };
    }
  }
  // The mapping as add() will get it, checked once more as a whole (options may depend on each other).
  for (const m of options.mappings) {
    located(`${m.source}: `, () => validateMapping(m.options));
  }
  checkDuplicates(options.mappings);
  if (!options.metrics && (options.metricsPerPort || options.metricsNodejs)) {
    throw new UsageError(
      `${options.metricsPerPort ? '--metrics-per-port' : '--metrics-nodejs'} needs --metrics`,
    );
  }
  return options;
}

/** Each address a spec listens on, for the duplicate check (none for a port still to be picked). */
function listenKeys(spec: MappingSpec): string[] {
  const { proto, listen } = spec.options;
  if (listen.port === 0 || spec.lastHostPort !== undefined) return [];
  const keys = [`${proto} ${formatEndpoint(listen.host ?? '0.0.0.0', listen.port)}`];
  if (spec.dualStack) keys.push(`${proto} ${formatEndpoint('::', listen.port)}`);
  return keys;
}

/** Two mappings on the same protocol, address and port cannot both listen: say so before starting. */
function checkDuplicates(mappings: readonly MappingSpec[]): void {
  const seen = new Map<string, MappingSpec>();
  for (const spec of mappings) {
    for (const key of listenKeys(spec)) {
      const other = seen.get(key);
      if (other) {
        throw new UsageError(
          `${key} is mapped twice (${other.source}${other.source === spec.source ? '' : ` and ${spec.source}`})`,
        );
      }
      seen.set(key, spec);
    }
  }
  // A name is the mapping's Prometheus label: two mappings under one name would sum silently.
  const named = new Map<string, MappingSpec>();
  for (const spec of mappings) {
    const { name } = spec.options;
    if (name === undefined) continue;
    const other = named.get(name);
    if (other)
      throw new UsageError(`name ${quote(name)} is given twice (${other.source} and ${spec.source})`);
    named.set(name, spec);
  }
}
