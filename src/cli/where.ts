/**
 * The command's errors: a `UsageError` says what is wrong with the command line or a config
 * file, and where (the CLI prints it with `Try 'portsplice --help'` and exits 2). The checks
 * themselves are the library's (src/config.ts); this only puts the location in front.
 */
import { describe } from '../config.js';

/** A bad command line or config file: the message says what is wrong (the CLI exits 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A value as the messages show it (the library's wording). */
export const quote = describe;

/**
 * Runs one of the library's checks, turning its TypeError/RangeError into a UsageError at
 * `prefix`. The library's messages begin with the field's path, or with `mapping`/`options`
 * for the object itself, so `prefix` is either a location ending in `.` (`file.json:
 * mappings[2].` + `listen.port must be ...`) or a label ending in `: ` (`--threads 0: ` +
 * `threads must be ...`).
 */
export function located<T>(prefix: string, check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof TypeError || err instanceof RangeError) {
      const root = /^(mapping|options)(?=[. ])/.exec(err.message);
      const message = root
        ? `${prefix.replace(/\.$/, '')}${err.message.slice(root[0].length)}`
        : `${prefix}${err.message}`;
      throw new UsageError(message);
    }
    throw err;
  }
}
