// nginx as the HTTP target when it is installed (Debian: nginx-light): one process, no
// master, no logs, a fixed "200 ok" on every port asked for. A C server costs less CPU per
// request than a Node one, which leaves more of a 2-core machine to the proxy under test.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Writes a config into `dir` and returns the argv that runs nginx in the foreground. */
export function nginxCommand(nginx, dir, host, ports) {
  mkdirSync(dir, { recursive: true });
  const temp = (name) => `${name} ${path.join(dir, name)};`;
  const listen = ports.map((port) => `    listen ${host}:${port} backlog=4096;`).join('\n');
  const config = `daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid ${path.join(dir, 'nginx.pid')};
error_log ${path.join(dir, 'error.log')} error;
events {
  worker_connections 16384;
  multi_accept on;
}
http {
  access_log off;
  server_tokens off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  ${temp('client_body_temp_path')}
  ${temp('proxy_temp_path')}
  ${temp('fastcgi_temp_path')}
  ${temp('uwsgi_temp_path')}
  ${temp('scgi_temp_path')}
  server {
${listen}
    default_type text/plain;
    location / {
      return 200 "ok\\n";
    }
  }
}
`;
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, config);
  return [nginx, '-p', dir, '-e', path.join(dir, 'error.log'), '-c', file];
}
