/**
 * portsplice: a port forwarder for Linux whose bytes are moved by the kernel.
 *
 * ```ts
 * import { createProxy } from 'portsplice';
 * const proxy = createProxy();
 * const m = await proxy.add({ proto: 'tcp', listen: { port: 8080 }, target: { host: '127.0.0.1', port: 80 } });
 * ```
 */
export { createProxy } from './proxy.js';
export type * from './types.js';
export { ErrorCodes, isPortspliceError } from './errors.js';
export type { LibraryErrorCode, PortspliceError } from './errors.js';
export { dockerProxyPath } from './docker-proxy-path.js';
