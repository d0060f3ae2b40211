/**
 * Where `npm install` builds portsplice-docker-proxy, the drop-in replacement for Docker's
 * docker-proxy, so that dockerd can be pointed at it:
 *
 * ```sh
 * dockerd --userland-proxy-path="$(node -p "require('portsplice').dockerProxyPath")"
 * ```
 *
 * require() of this ES module needs Node 20.19 or 22.12 and later; on older versions use
 * `node --input-type=module -e "import('portsplice').then((m) => console.log(m.dockerProxyPath))"`.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: this file is compiled to dist/docker-proxy-path.js. */
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The absolute path of the portsplice-docker-proxy executable, which node-gyp builds next to the
 * addon. It runs without Node, takes docker-proxy's flags and speaks its fd 3 protocol.
 * PORTSPLICE_DOCKER_PROXY names another build of it instead (a cmake-js or sanitizer build), as
 * PORTSPLICE_ADDON does for the addon; a relative path is taken from the current directory.
 */
export const dockerProxyPath: string = process.env.PORTSPLICE_DOCKER_PROXY
  ? path.resolve(process.env.PORTSPLICE_DOCKER_PROXY)
  : path.join(packageRoot, 'build', 'Release', 'portsplice-docker-proxy');
