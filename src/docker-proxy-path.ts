/**
 * Where the package keeps portsplice-docker-proxy, the drop-in replacement for Docker's
 * docker-proxy (prebuilt in prebuilds/, or built by node-gyp). dockerd should get a copy
 * outside node_modules/ (`portsplice docker-proxy install` makes one and prints the
 * daemon.json lines), since this path changes whenever the project is reinstalled or moved.
 *
 * require() of this ES module needs Node 20.19 or 22.12 and later; on older versions use
 * `node --input-type=module -e "import('portsplice').then((m) => console.log(m.dockerProxyPath))"`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: this file is compiled to dist/docker-proxy-path.js. */
const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The absolute path of the portsplice-docker-proxy executable: node-gyp's build next to the
 * addon when there is one (as node-gyp-build prefers build/ for the addon), else the prebuilt
 * binary shipped in the package; node-gyp's path when neither exists (the file then is missing).
 * It runs without Node, takes docker-proxy's flags and speaks its fd 3 protocol.
 * PORTSPLICE_DOCKER_PROXY names another build of it instead (a cmake-js or sanitizer build), as
 * PORTSPLICE_ADDON does for the addon; a relative path is taken from the current directory.
 */
export const dockerProxyPath: string = process.env.PORTSPLICE_DOCKER_PROXY
  ? path.resolve(process.env.PORTSPLICE_DOCKER_PROXY)
  : findDropIn();

function findDropIn(): string {
  const built = path.join(packageRoot, 'build', 'Release', 'portsplice-docker-proxy');
  const prebuilt = path.join(
    packageRoot,
    'prebuilds',
    `${process.platform}-${process.arch}`,
    'portsplice-docker-proxy',
  );
  return !fs.existsSync(built) && fs.existsSync(prebuilt) ? prebuilt : built;
}
