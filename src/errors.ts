/**
 * The errors the library itself raises, and a guard for every error it rejects with.
 * Option errors come from config.ts (`ERR_INVALID_ARG_*`, `ERR_OUT_OF_RANGE`), system errors
 * from the engines (`EADDRINUSE`, `EACCES`…, with `errno`, `syscall`, `address`, `port`).
 */
import { getSystemErrorName } from 'node:util';

/** The codes of the errors the library raises itself. */
export const ErrorCodes = Object.freeze({
  /** The proxy was closed before or while the call ran. */
  PROXY_CLOSED: 'ERR_PROXY_CLOSED',
  /** `remove()` or `stats()` was given a mapping that is not active on this proxy. */
  UNKNOWN_MAPPING: 'ERR_UNKNOWN_MAPPING',
  INVALID_ARG_TYPE: 'ERR_INVALID_ARG_TYPE',
  INVALID_ARG_VALUE: 'ERR_INVALID_ARG_VALUE',
  OUT_OF_RANGE: 'ERR_OUT_OF_RANGE',
} as const);

export type LibraryErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** An error the library rejects with: a library code, or a system error's errno name. */
export interface PortspliceError extends Error {
  /** One of `ErrorCodes`, or an errno name such as `'EADDRINUSE'`. */
  code: LibraryErrorCode | (string & {});
  /** A system error's errno, negative as in Node (`-98` for EADDRINUSE). */
  errno?: number;
  /** The system call that failed. */
  syscall?: string;
  /** The address and port involved, where one applies. */
  address?: string;
  port?: number;
}

/** The errno name of a negative errno (`-111` -> `'ECONNREFUSED'`), or `'UNKNOWN'`. */
export function errnoCode(errno: number): string {
  // Node names what libuv knows and says "Unknown system error -N" for the rest.
  const name = getSystemErrorName(errno);
  return /^E[A-Z0-9]+$/.test(name) ? name : 'UNKNOWN';
}

/** True for an error with a string `code`, as every error the library raises has. */
export function isPortspliceError(error: unknown): error is PortspliceError {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'string';
}

export function proxyClosedError(): PortspliceError {
  return Object.assign(new Error('the proxy is closed'), { code: ErrorCodes.PROXY_CLOSED });
}

export function unknownMappingError(id: unknown): PortspliceError {
  return Object.assign(new Error(`mapping ${String(id)} is not active on this proxy`), {
    code: ErrorCodes.UNKNOWN_MAPPING,
  });
}
