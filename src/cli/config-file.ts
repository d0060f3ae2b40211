/**
 * `--config FILE`: `{ "mappings": [...], ...settings }` or just the mappings array. Each
 * mapping is an object as `proxy.add()` takes it (`proto` defaults to tcp) or a `-p` string;
 * the settings are createProxy()'s options and the command's own (options.ts). The library
 * checks every value; errors say where: `file.json: mappings[2].target.port must be ...`,
 * and `file.json:LINE:COLUMN: ...` for JSON that does not parse.
 */
import { validateMapping, validateProxyOptions } from '../config.js';
import type { MappingOptions, ProxyOptions } from '../types.js';
import { OPTIONS, type CommandSettings } from './options.js';
import { parsePortSpec } from './publish.js';
import type { MappingSpec } from './spec.js';
import { UsageError, located, quote } from './where.js';

export interface ConfigFile {
  mappings: MappingSpec[];
  proxy: ProxyOptions;
  settings: Partial<CommandSettings>;
}

/** The top-level keys besides "mappings", from the option table. */
const SETTINGS = OPTIONS.filter((o) => o.scope === 'proxy' || o.scope === 'command');

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** `LINE:COLUMN` (1-based) of a JSON.parse error, when V8's message gives a position. */
function jsonPosition(text: string, message: string): string | undefined {
  const m = /at position (\d+)/.exec(message);
  const pos = m ? Number(m[1]) : /end of JSON input/.test(message) ? text.length : undefined;
  if (pos === undefined) return undefined;
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  return `${line}:${pos - before.lastIndexOf('\n')}`;
}

/** Parses the text of a config file named `file` (for the messages). */
export function parseConfig(text: string, file: string): ConfigFile {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    const message = (err as Error).message;
    const at = jsonPosition(text, message);
    throw new UsageError(
      `${file}${at ? `:${at}` : ''}: invalid JSON: ${message.replace(/ (in JSON )?at position \d+.*$/, '')}`,
    );
  }
  const result: ConfigFile = { mappings: [], proxy: {}, settings: {} };
  let list: unknown = data;
  if (isObject(data)) {
    const allowed = ['mappings', ...SETTINGS.map((o) => o.key)];
    for (const key of Object.keys(data)) {
      if (!allowed.includes(key)) {
        throw new UsageError(
          `${file}: ${key} is not a known setting (expected one of: ${allowed.join(', ')})`,
        );
      }
    }
    for (const o of SETTINGS) {
      if (data[o.key] === undefined) continue;
      if (o.scope === 'proxy') Object.assign(result.proxy, { [o.key]: data[o.key] });
      else Object.assign(result.settings, { [o.key]: o.parse(data[o.key], `${file}: ${o.key}`) });
    }
    located(`${file}: `, () => validateProxyOptions(result.proxy, 'splice'));
    if (data.mappings === undefined) throw new UsageError(`${file}: "mappings" is missing`);
    list = data.mappings;
  } else if (!Array.isArray(data)) {
    throw new UsageError(
      `${file}: expected an object with "mappings" or an array of mappings, got ${quote(data)}`,
    );
  }
  if (!Array.isArray(list)) throw new UsageError(`${file}: mappings must be an array, got ${quote(list)}`);
  list.forEach((item: unknown, i) => {
    const where = `${file}: mappings[${i}]`;
    if (typeof item === 'string') {
      result.mappings.push(
        ...parsePortSpec(item, { what: `${where} ${quote(item)}`, source: `${where} ${item}` }),
      );
    } else if (isObject(item)) {
      const options = { proto: 'tcp', ...item } as MappingOptions;
      located(`${where}.`, () => validateMapping(options));
      result.mappings.push({ options, source: where });
    } else {
      throw new UsageError(`${where} must be an object or a -p string, got ${quote(item)}`);
    }
  });
  return result;
}
