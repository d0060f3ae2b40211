/** `portsplice --help`: the usage, and every flag from the option table (options.ts). */
import { OPTIONS, type OptionDef } from './options.js';
import { MAX_RANGE } from './publish.js';

const WIDTH = 92;
const INDENT = 25;

/** Words of `text` in lines of at most WIDTH columns, each indented by `indent`. */
function wrap(text: string, indent: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && indent + line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines.map((l) => ' '.repeat(indent) + l);
}

function flagLines(o: OptionDef): string[] {
  const name = `  ${o.short ? `-${o.short}, ` : ''}--${o.flag}${o.value ? ` ${o.value}` : ''}`;
  const proto = o.scope === 'mapping' && o.proto ? `${o.proto.toUpperCase()} only. ` : '';
  const body = wrap(proto + o.help, INDENT);
  if (name.length < INDENT - 1) return [name.padEnd(INDENT) + body[0]!.trimStart(), ...body.slice(1)];
  return [name, ...body];
}

const section = (keep: (o: OptionDef) => boolean) => OPTIONS.filter(keep).flatMap(flagLines).join('\n');
const isInfo = (o: OptionDef) => o.key === 'help' || o.key === 'version';

export const HELP = `Usage: portsplice [options] -p SPEC [-p SPEC ...]
       portsplice [options] --config FILE
       portsplice docker-proxy [path | install [DIR]]   (see portsplice docker-proxy --help)

Forwards TCP and UDP ports to other addresses; one process serves many ports.

Mappings:
${section((o) => o.scope === 'cli' && !isInfo(o))}

  SPEC is docker run -p's, with the target's address: [HOST_IP:][HOST_PORT]:TARGET_IP:TARGET_PORT.
  Without HOST_IP it listens on 0.0.0.0 and [::] (IPv4 only on a host without IPv6). An
  empty HOST_PORT or 0 picks a free port. Ranges of equal length map port to port
  (8000-8099:10.1.0.2:9000-9099, at most ${MAX_RANGE} ports); a HOST_PORT range with one
  TARGET_PORT listens on the first free port of the range. IPv6 addresses go in brackets:
  [::1]:8080:[fd00::2]:80.

  FILE is JSON: {"mappings": [...], "engine", "threads", "pipeSize", "maxPipes", "json",
  "interval", "metrics", "drainTimeout"} (or just the array); each mapping an object as
  proxy.add() takes it ("proto" defaults to tcp), e.g. {"proto": "udp", "listen": {"port": 53},
  "target": {"host": "10.0.0.2", "port": 53}, "udpTimeoutMs": 30000}, or a SPEC string.
  Flags given on the command line win over the file's settings.

Engine:
${section((o) => o.scope === 'proxy')}

Per mapping (each applies to every mapping that does not set it in its config file):
${section((o) => o.scope === 'mapping')}

Output and lifetime:
${section((o) => o.scope === 'command')}
${section(isInfo)}

On a terminal, a live view shows connections and throughput per mapping. Otherwise (and
without --json) one line per mapping is printed at startup, then a log. SIGHUP reloads the
--config files (a bad file changes nothing). When fd 3 is a pipe, "0\\n" is written to it once
every port is listening, or "1\\n" and the error before exiting. For docker-proxy's flags
(-proto, -host-port, -use-listen-fd...) use the drop-in binary: portsplice docker-proxy.

Exit status: 0 after a clean shutdown, 1 when a port cannot be opened (nothing is left
listening), 2 for bad arguments.`;
