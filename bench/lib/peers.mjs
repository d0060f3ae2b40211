// The forwarders a user would pick instead of portsplice, run as methods when installed
// (Debian packages haproxy and socat), each configured as its own documentation describes
// raw TCP forwarding.
//
// HAProxy 2.6 (configuration.txt): one process, `mode tcp`, `option splice-auto` (kernel
// splicing where its heuristics expect a gain), no logging, timeouts far longer than any test
// (a connection held by the memory test must not be cut), and maxconn and nbthread left at
// their defaults: maxconn "calculated based on the current file descriptors limit", nbthread
// "the number of CPUs the process is bound to" (every core here, as Go's runtime uses for
// docker-proxy). HAProxy forwards no UDP.
//
// socat 1.7 (man socat): `TCP-LISTEN:PORT,fork,reuseaddr TCP:TARGET:PORT`, a child process per
// connection, which copies with read()/write() through an 8 KiB buffer. One setting departs
// from socat's defaults: backlog=4096 (its default listen backlog is 5, which at thousands of
// new connections per second drops SYNs and measures 1 s SYN retransmits, not forwarding;
// every other method listens with a backlog of at least 4096). UDP: `UDP-LISTEN:PORT,fork,
// reuseaddr UDP:TARGET:PORT` makes a child per client address ("connects" the socket to the
// first peer); the UDP test sends from one address, so one child carries it, but datagrams
// from a second client that arrive while the parent forks are lost: this is socat's UDP
// forwarding at its best, not a general one. -T 30 ends a UDP child idle for 30 s.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** The HAProxy configuration for `listens`: [{ name, host, port, targetHost, targetPort }]. */
export function haproxyConfig(listens) {
  const sections = listens.map(
    (l) => `listen ${l.name}
  bind ${l.host}:${l.port}
  server target ${l.targetHost}:${l.targetPort}
`,
  );
  return `defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 10m
  timeout server 10m

${sections.join('\n')}`;
}

/** Writes the configuration into `dir` and returns the argv that runs HAProxy in the foreground. */
export function haproxyCommand(haproxy, dir, listens) {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, haproxyConfig(listens));
  return [haproxy, '-db', '-f', file];
}

/** The argv of one socat forwarder for `proto` ('tcp' or 'udp'). */
export function socatCommand(socat, proto, host, port, targetHost, targetPort) {
  if (proto === 'tcp') {
    return [
      socat,
      `TCP-LISTEN:${port},bind=${host},fork,reuseaddr,backlog=4096`,
      `TCP:${targetHost}:${targetPort}`,
    ];
  }
  return [
    socat,
    '-T',
    '30',
    `UDP-LISTEN:${port},bind=${host},fork,reuseaddr`,
    `UDP:${targetHost}:${targetPort}`,
  ];
}
