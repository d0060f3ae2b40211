// Unit and property tests of the CLI's pure argument parser (dist/cli/*.js): -p specs by
// Docker's rules, the flags from the option table, the config file, and the errors for the rest.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import fc from 'fast-check';

import { parseArgs } from '../dist/cli/args.js';
import { parseConfig } from '../dist/cli/config-file.js';
import { parseListenAddress } from '../dist/cli/endpoint.js';
import { HELP } from '../dist/cli/help.js';
import { DEFAULT_DRAIN_TIMEOUT, OPTIONS } from '../dist/cli/options.js';
import { parsePortSpec, MAX_RANGE } from '../dist/cli/publish.js';
import { UsageError } from '../dist/cli/where.js';

/** Assert that `fn` throws a UsageError whose message matches `message`. */
function usage(fn, message) {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof UsageError, `expected a UsageError, got ${err?.stack ?? err}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

const tcp = (lh, lp, th, tp) => ({
  proto: 'tcp',
  listen: { host: lh, port: lp },
  target: { host: th, port: tp },
});
const udp = (lh, lp, th, tp) => ({ ...tcp(lh, lp, th, tp), proto: 'udp' });
/** The mapping options of a -p spec. */
const opts = (spec) => parsePortSpec(spec).map((s) => s.options);

describe('-p specs', () => {
  test('the forms users know from docker run -p', () => {
    assert.deepEqual(opts('127.0.0.1:8080:10.0.0.2:80'), [tcp('127.0.0.1', 8080, '10.0.0.2', 80)]);
    assert.deepEqual(opts('127.0.0.1:53:10.0.0.2:53/udp'), [udp('127.0.0.1', 53, '10.0.0.2', 53)]);
    assert.deepEqual(opts('127.0.0.1:53:10.0.0.2:53/UDP'), [udp('127.0.0.1', 53, '10.0.0.2', 53)]);
    assert.deepEqual(opts('127.0.0.1:8080:10.0.0.2:80/tcp'), [tcp('127.0.0.1', 8080, '10.0.0.2', 80)]);
    assert.deepEqual(opts('localhost:8080:db.internal:5432'), [tcp('localhost', 8080, 'db.internal', 5432)]);
    assert.deepEqual(opts('127.0.0.1:0:10.0.0.2:80'), [tcp('127.0.0.1', 0, '10.0.0.2', 80)], '0: any');
    assert.deepEqual(opts('127.0.0.1:08080:10.0.0.2:0080'), [tcp('127.0.0.1', 8080, '10.0.0.2', 80)]);
    const [one] = parsePortSpec('127.0.0.1:8080:10.0.0.2:80');
    assert.equal(one.dualStack, undefined, 'a host IP: that address only');
    assert.equal(one.lastHostPort, undefined);
    assert.equal(one.source, '-p 127.0.0.1:8080:10.0.0.2:80');
  });

  test('no host IP: IPv4 and IPv6, like docker run -p 8080:80', () => {
    for (const spec of ['8080:10.0.0.2:80', ':8080:10.0.0.2:80']) {
      assert.deepEqual(parsePortSpec(spec), [
        { options: tcp('0.0.0.0', 8080, '10.0.0.2', 80), source: `-p ${spec}`, dualStack: true },
      ]);
    }
    assert.deepEqual(parsePortSpec('0.0.0.0:8080:10.0.0.2:80')[0].dualStack, undefined, '0.0.0.0: IPv4 only');
  });

  test("an empty host port picks a free one (Docker's :80 and 127.0.0.1::80)", () => {
    assert.deepEqual(parsePortSpec(':10.0.0.2:80'), [
      { options: tcp('0.0.0.0', 0, '10.0.0.2', 80), source: '-p :10.0.0.2:80', dualStack: true },
    ]);
    assert.deepEqual(opts('127.0.0.1::10.0.0.2:80'), [tcp('127.0.0.1', 0, '10.0.0.2', 80)]);
    // A target range with no host port: a free port for each.
    assert.deepEqual(opts('127.0.0.1::10.0.0.2:80-82'), [
      tcp('127.0.0.1', 0, '10.0.0.2', 80),
      tcp('127.0.0.1', 0, '10.0.0.2', 81),
      tcp('127.0.0.1', 0, '10.0.0.2', 82),
    ]);
    // Docker rejects 0 with a target range (0 is one port); so does this.
    usage(() => parsePortSpec('0:10.0.0.2:80-81'), /host side has 1 port and the target side 2/);
  });

  test('a host range to one target port: the first free port of the range (Docker 8000-8010:80)', () => {
    assert.deepEqual(parsePortSpec('127.0.0.1:8000-8010:10.0.0.2:80'), [
      {
        options: tcp('127.0.0.1', 8000, '10.0.0.2', 80),
        source: '-p 127.0.0.1:8000-8010:10.0.0.2:80',
        lastHostPort: 8010,
      },
    ]);
  });

  test("'80/' is tcp, as Docker's SplitProtoPort has it", () => {
    assert.deepEqual(opts('127.0.0.1:8080:10.0.0.2:80/'), [tcp('127.0.0.1', 8080, '10.0.0.2', 80)]);
  });

  test('IPv6 addresses in brackets on either side', () => {
    assert.deepEqual(opts('[::1]:8080:127.0.0.1:80'), [tcp('::1', 8080, '127.0.0.1', 80)]);
    assert.deepEqual(opts('[::1]:8080:[::1]:80'), [tcp('::1', 8080, '::1', 80)]);
    assert.deepEqual(opts('[::]:8080:[fd00::2]:80/udp'), [udp('::', 8080, 'fd00::2', 80)]);
    assert.deepEqual(opts('[::ffff:127.0.0.1]:1:[2001:db8::1]:2'), [
      tcp('::ffff:127.0.0.1', 1, '2001:db8::1', 2),
    ]);
  });

  test('ranges map port to port', () => {
    const ms = opts('127.0.0.1:8000-8099:10.1.0.2:9000-9099');
    assert.equal(ms.length, 100);
    ms.forEach((m, i) => assert.deepEqual(m, tcp('127.0.0.1', 8000 + i, '10.1.0.2', 9000 + i)));
    assert.deepEqual(opts('127.0.0.1:5-5:1.2.3.4:7-7'), [tcp('127.0.0.1', 5, '1.2.3.4', 7)]);
    assert.equal(parsePortSpec(`1-${MAX_RANGE}:1.2.3.4:1-${MAX_RANGE}`).length, MAX_RANGE);
  });

  test('bad specs say what is wrong', () => {
    const bad = [
      ['', /needs a value/],
      ['8080', /expected \[HOST_IP:\]\[HOST_PORT\]:TARGET_IP:TARGET_PORT/],
      ['8080:80', /target address is missing/],
      ['8080:10.0.0.2', /target address is missing/],
      ['127.0.0.1:8080:80', /target address is missing/],
      ['1.2.3.4:8080:10.0.0.2:80:90', /too many ':'/],
      ['::1:8080:127.0.0.1:80', /IPv6 addresses must be in brackets/],
      ['8080::80', /target IP is empty/],
      ['8080:10.0.0.2:', /ends with ':'/],
      ['70000:10.0.0.2:80', /host port must be a number from 0 to 65535, got "70000"/],
      ['8080:10.0.0.2:0', /target port must be a number from 1 to 65535, got "0"/],
      ['8080:10.0.0.2:65536', /target port must be a number from 1 to 65535/],
      ['abc:10.0.0.2:80', /host port must be a number/],
      ['-1:10.0.0.2:80', /host port range start must be a number/],
      ['+80:10.0.0.2:80', /host port must be a number/],
      ['0-5:10.0.0.2:1-6', /host port range start must be a number from 1 to 65535, got "0"/],
      ['8010-8000:10.0.0.2:8000-8010', /reversed: 8010 is greater than 8000/],
      ['65530-65536:10.0.0.2:1-7', /range end must be a number from 1 to 65535, got "65536"/],
      [`1-${MAX_RANGE + 1}:10.0.0.2:1-${MAX_RANGE + 1}`, /has 10001 ports; at most 10000/],
      [
        '80:10.0.0.2:8000-8002',
        /host side has 1 port and the target side 3; port ranges must be the same length/,
      ],
      ['8000-8002:10.0.0.2:9000-9003', /same length/],
      ['8000-:10.0.0.2:80', /range end must be a number/],
      ['8000-8001-8002:10.0.0.2:80-81', /range end must be a number/],
      ['8080:10.0.0.2:80/sctp', /sctp is not supported/],
      ['8080:10.0.0.2:80/http', /protocol must be tcp or udp, got "http"/],
      ['8080:10.0.0.2:80/tcp/udp', /protocol must be tcp or udp, got "tcp\/udp"/],
      ['8080:10.0.0.2: 80', /whitespace/],
      ['[1.2.3.4]:8080:10.0.0.2:80', /"1.2.3.4" in brackets is not an IPv6 address/],
      ['[::1:8080:10.0.0.2:80', /unclosed '\['/],
      ['[::1]x:8080:10.0.0.2:80', /expected ':' after "\[::1\]"/],
      ['::1]:8080:10.0.0.2:80', /bracket|too many/],
      // Hosts are the library's check, in its words, after the -p value.
      [
        '999.1.1.1:8080:10.0.0.2:80',
        /^-p "999.1.1.1:8080:10.0.0.2:80": listen.host must be an IPv4 or IPv6 address or a host name, got "999.1.1.1"$/,
      ],
      [
        '8080:bad_name!:80',
        /^-p "8080:bad_name!:80": target.host must be an IPv4 or IPv6 address or a host name/,
      ],
      ['[::zz]:8080:10.0.0.2:80', /listen.host must be an IPv4 or IPv6 address/],
      ['8080:10.0.0.2:80:', /ends with ':' where the target port should be/],
    ];
    for (const [spec, message] of bad) usage(() => parsePortSpec(spec), message);
  });
});

const P = ['-p', '127.0.0.1:1:1.1.1.1:1'];

describe('flags', () => {
  test('defaults', () => {
    const o = parseArgs(['-p', '8080:10.0.0.2:80']);
    assert.deepEqual(o.mappings, [
      { options: tcp('0.0.0.0', 8080, '10.0.0.2', 80), source: '-p 8080:10.0.0.2:80', dualStack: true },
    ]);
    assert.equal(o.json, false);
    assert.equal(o.interval, undefined);
    assert.deepEqual(o.proxy, {}, 'the library defaults: splice, threads auto');
    assert.equal(o.metrics, undefined);
    assert.equal(o.drainTimeout, DEFAULT_DRAIN_TIMEOUT);
    assert.equal(o.help, false);
    assert.equal(o.version, false);
  });

  test('-p is repeatable and takes its value in every Go/GNU form', () => {
    const o = parseArgs([
      '-p',
      '1:1.1.1.1:1',
      '-p=2:1.1.1.1:2',
      '--publish',
      '3:1.1.1.1:3',
      '--publish=4:1.1.1.1:4',
      '-p5:1.1.1.1:5',
      '-p[::1]:6:1.1.1.1:6',
      '-publish',
      '7-8:1.1.1.1:7-8/udp',
    ]);
    assert.deepEqual(
      o.mappings.map((m) => [m.options.proto, m.options.listen.port]),
      [
        ['tcp', 1],
        ['tcp', 2],
        ['tcp', 3],
        ['tcp', 4],
        ['tcp', 5],
        ['tcp', 6],
        ['udp', 7],
        ['udp', 8],
      ],
    );
    assert.equal(o.mappings[5].options.listen.host, '::1');
  });

  test('options', () => {
    const o = parseArgs([
      '--engine',
      'stream',
      '-threads=4',
      '--pipe-size',
      '65536',
      '--max-pipes=8',
      '--json',
      '--interval',
      '0.5',
      '--metrics',
      '127.0.0.1:9464',
      '--drain-timeout=2.5',
      ...P,
    ]);
    assert.deepEqual(o.proxy, { engine: 'stream', threads: 4, pipeSize: 65536, maxPipes: 8 });
    assert.equal(parseArgs(['--threads', 'auto', ...P]).proxy.threads, 'auto');
    assert.equal(o.json, true);
    assert.equal(o.interval, 0.5);
    assert.deepEqual(o.metrics, { host: '127.0.0.1', port: 9464 });
    assert.equal(o.drainTimeout, 2.5);
    assert.equal(parseArgs(['--json=false', ...P]).json, false);
    assert.equal(parseArgs(['--drain-timeout', '0', ...P]).drainTimeout, 0);
  });

  test('per-mapping flags reach every mapping of their protocol that does not set them', () => {
    const files = {
      'c.json': JSON.stringify([
        { listen: { port: 1 }, target: { host: 'a', port: 1 }, connectTimeoutMs: 250 },
        { proto: 'udp', listen: { port: 2 }, target: { host: 'a', port: 2 } },
      ]),
    };
    const o = parseArgs(
      [
        '-c',
        'c.json',
        '-p',
        '127.0.0.1:3:1.1.1.1:3',
        '-p',
        '127.0.0.1:4:1.1.1.1:4/udp',
        '--connect-timeout',
        '1.5',
        '--backlog=64',
        '--keepalive',
        '60,10,3',
        '--udp-timeout',
        '30',
        '--udp-max-flows',
        '100',
      ],
      (f) => files[f],
    );
    const tcpFlags = {
      connectTimeoutMs: 1500,
      backlog: 64,
      keepAlive: { idleMs: 60000, intervalMs: 10000, count: 3 },
    };
    const udpFlags = { udpTimeoutMs: 30000, udpMaxFlows: 100 };
    assert.deepEqual(
      o.mappings.map((m) => m.options),
      [
        { ...tcp(undefined, 1, 'a', 1), listen: { port: 1 }, ...tcpFlags, connectTimeoutMs: 250 },
        { ...udp(undefined, 2, 'a', 2), listen: { port: 2 }, ...udpFlags },
        { ...tcp('127.0.0.1', 3, '1.1.1.1', 3), ...tcpFlags },
        { ...udp('127.0.0.1', 4, '1.1.1.1', 4), ...udpFlags },
      ],
    );
    assert.equal(parseArgs(['--keepalive', 'off', ...P]).mappings[0].options.keepAlive, false);
    assert.deepEqual(parseArgs(['--keepalive', '30', ...P]).mappings[0].options.keepAlive, { idleMs: 30000 });
    assert.equal(
      parseArgs(['--backlog', '1', '--backlog', '2', ...P]).mappings[0].options.backlog,
      2,
      'the last one wins',
    );
  });

  test('per-mapping flags are checked by the library, named by the flag', () => {
    const bad = [
      [['--connect-timeout', '0'], /^--connect-timeout 0: connectTimeoutMs must be an integer from 1 to/],
      [['--connect-timeout', 'soon'], /^--connect-timeout must be a number of seconds, got "soon"$/],
      [['--backlog', '70000'], /^--backlog 70000: backlog must be an integer from 1 to 65535, got 70000$/],
      [['--keepalive', '1.5'], /^--keepalive 1.5: keepAlive.idleMs must be a whole number of seconds/],
      [['--keepalive', 'on'], /^--keepalive must be off or IDLE/],
      [['--keepalive', '15,15,200'], /keepAlive.count must be an integer from 1 to 127/],
      [['--udp-max-flows', '0'], /^--udp-max-flows 0: udpMaxFlows must be an integer/],
      [['--udp-timeout', '5'], /^--udp-timeout 5: applies to udp mappings, and there are none$/],
      [
        ['--pipe-size', '100'],
        /^--pipe-size 100: pipeSize must be an integer from 4096 to 1048576, got 100$/,
      ],
      [['--max-pipes', 'x'], /^--max-pipes x: maxPipes must be a number, got "x"$/],
    ];
    for (const [argv, message] of bad) usage(() => parseArgs([...argv, ...P]), message);
  });

  test('the help lists every flag of the option table', () => {
    for (const o of OPTIONS) {
      assert.match(HELP, new RegExp(`\n  (-${o.short}, )?--${o.flag}[ \n]`), `--${o.flag} in the help`);
    }
  });

  test('--metrics addresses', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:9464', 'm'), { host: '127.0.0.1', port: 9464 });
    assert.deepEqual(parseListenAddress('[::1]:9464', 'm'), { host: '::1', port: 9464 });
    assert.deepEqual(parseListenAddress(':9464', 'm'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(parseListenAddress('9464', 'm'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(parseListenAddress('localhost:9464', 'm'), { host: 'localhost', port: 9464 });
    usage(() => parseListenAddress('::1:9464', '--metrics'), /--metrics/);
    usage(() => parseListenAddress('1.2.3.4:99999', '--metrics'), /--metrics port must be a number/);
    usage(() => parseListenAddress('[1.2.3.4]:9464', '--metrics'), /not an IPv6 address/);
    usage(
      () => parseListenAddress('a_b:9464', '--metrics'),
      /^--metrics: host must be an IPv4 or IPv6 address or a host name/,
    );
    usage(() => parseListenAddress('', '--metrics'), /port must be a number/);
  });

  test('--help and --version win over missing mappings', () => {
    assert.equal(parseArgs(['--help']).help, true);
    assert.equal(parseArgs(['-h']).help, true);
    assert.equal(parseArgs(['-help']).help, true);
    assert.equal(parseArgs(['-v']).version, true);
    assert.equal(parseArgs(['--version']).version, true);
    assert.equal(parseArgs(['-version']).version, true);
  });

  test('bad flags say what is wrong', () => {
    const bad = [
      [[], /no mappings/],
      [['--json'], /no mappings/],
      [['--frobnicate'], /unknown flag: --frobnicate/],
      [['-x=1'], /unknown flag: -x/],
      [['8080:10.0.0.2:80'], /unexpected argument: "8080:10.0.0.2:80" \(mappings are given with -p\)/],
      [['-p'], /flag -p needs a value/],
      [['-p', '--json'], /flag -p needs a value/],
      [['--engine'], /flag --engine needs a value/],
      [['--engine', 'fast', ...P], /^--engine fast: engine must be one of 'splice', 'stream', got "fast"$/],
      [['--threads', '0', ...P], /^--threads 0: threads must be an integer from 1 to 64, got 0$/],
      [['--threads', '65', ...P], /from 1 to 64/],
      [['--threads', '2.5', ...P], /from 1 to 64, got 2.5/],
      [['--threads', 'many', ...P], /threads must be 'auto' or a number, got "many"/],
      [['--interval', '0', ...P], /--interval must be a number of seconds from 0.05/],
      [['--interval', 'soon', ...P], /--interval must be a number of seconds/],
      [['--drain-timeout', '-1', ...P], /--drain-timeout needs a value/],
      [['--drain-timeout=-1', ...P], /--drain-timeout must be a number of seconds from 0/],
      [['--json=maybe', ...P], /--json takes no value \(or true\/false\), got "maybe"/],
      [[...P, 'extra'], /unexpected argument: "extra"/],
      [[...P, '--', 'extra'], /unexpected argument: "extra"/],
      [
        ['-p', '80:1.1.1.1:80', '-p', '127.0.0.1:80:1.1.1.1:81', '-p', '0.0.0.0:80:2.2.2.2:90'],
        /tcp 0.0.0.0:80 is mapped twice/,
      ],
      [['-p', '80:1.1.1.1:80', '-p', '[::]:80:1.1.1.1:80'], /tcp \[::\]:80 is mapped twice/],
      [['-p', '80-90:1.1.1.1:80-90', '-p', '85:1.1.1.1:85'], /tcp 0.0.0.0:85 is mapped twice/],
    ];
    for (const [argv, message] of bad) usage(() => parseArgs(argv), message);
    // The same port on tcp and udp, or on two addresses, is fine; port 0 twice is too.
    assert.equal(
      parseArgs(['-p', '80:1.1.1.1:80', '-p', '80:1.1.1.1:80/udp', '-p', '127.0.0.1:80:1.1.1.1:80']).mappings
        .length,
      3,
    );
    assert.equal(parseArgs(['-p', '0:1.1.1.1:80', '-p', '0:1.1.1.1:80']).mappings.length, 2);
  });
});

describe("docker-proxy's flags", () => {
  test("are the drop-in binary's: the command names it instead of parsing them a second way", () => {
    for (const flag of [
      '-proto',
      '-host-ip',
      '--host-port',
      '-container-ip',
      '-container-port',
      '-use-listen-fd',
    ]) {
      usage(
        () => parseArgs([flag, 'tcp', ...P]),
        new RegExp(
          `^${flag} is docker-proxy's flag: run the drop-in portsplice-docker-proxy .*'portsplice docker-proxy' prints its path.*-p HOST_IP:HOST_PORT:CONTAINER_IP:CONTAINER_PORT`,
        ),
      );
    }
    usage(() => parseArgs(['-use-listen-fd=tRuE', ...P]), /docker-proxy's flag/);
  });
});

describe('--config', () => {
  const files = {
    'full.json': JSON.stringify({
      engine: 'stream',
      threads: 2,
      pipeSize: 65536,
      maxPipes: 10,
      drainTimeout: 3,
      metrics: '127.0.0.1:9464',
      interval: 2,
      json: true,
      mappings: [
        {
          proto: 'udp',
          listen: { host: '0.0.0.0', port: 53 },
          target: { host: '10.0.0.2', port: 53 },
          udpTimeoutMs: 30000,
          udpMaxFlows: 100,
        },
        {
          listen: { port: 8080 },
          target: { host: 'backend', port: 80 },
          connectTimeoutMs: 500,
          backlog: 10,
          ipv6Only: false,
          keepAlive: { idleMs: 60000, count: 3 },
        },
        '9000-9001:10.0.0.3:9000-9001',
      ],
    }),
    'array.json': JSON.stringify([
      { proto: 'tcp', listen: { host: '::1', port: 1 }, target: { host: '::1', port: 2 } },
    ]),
  };
  const read = (file) => {
    if (!(file in files)) throw new Error(`ENOENT: no such file or directory, open '${file}'`);
    return files[file];
  };

  test('mappings as the API takes them, -p strings, proxy options and the command settings', () => {
    const o = parseArgs(['--config', 'full.json'], read);
    assert.deepEqual(o.proxy, { engine: 'stream', threads: 2, pipeSize: 65536, maxPipes: 10 });
    assert.equal(o.drainTimeout, 3);
    assert.deepEqual(o.metrics, { host: '127.0.0.1', port: 9464 });
    assert.equal(o.interval, 2);
    assert.equal(o.json, true);
    assert.deepEqual(
      o.mappings.map((m) => m.options),
      [
        { ...udp('0.0.0.0', 53, '10.0.0.2', 53), udpTimeoutMs: 30000, udpMaxFlows: 100 },
        {
          proto: 'tcp',
          listen: { port: 8080 },
          target: { host: 'backend', port: 80 },
          connectTimeoutMs: 500,
          backlog: 10,
          ipv6Only: false,
          keepAlive: { idleMs: 60000, count: 3 },
        },
        tcp('0.0.0.0', 9000, '10.0.0.3', 9000),
        tcp('0.0.0.0', 9001, '10.0.0.3', 9001),
      ],
    );
    assert.equal(o.mappings[1].source, 'full.json: mappings[1]');
    assert.equal(o.mappings[2].source, 'full.json: mappings[2] 9000-9001:10.0.0.3:9000-9001');
    const a = parseArgs(['-c', 'array.json', '-p', '2:1.1.1.1:2', '--engine', 'splice'], read);
    assert.deepEqual(
      a.mappings.map((m) => m.options.listen.port),
      [1, 2],
    );
    const flags = parseArgs(['--engine', 'splice', '--drain-timeout', '7', '--config', 'full.json'], read);
    assert.equal(flags.proxy.engine, 'splice', 'flags win');
    assert.equal(flags.drainTimeout, 7, 'flags win');
  });

  test("errors name the file and the field, in the library's words", () => {
    const cfg = (value) => () => parseConfig(JSON.stringify(value), 'c.json');
    usage(() => parseConfig('{', 'c.json'), /^c.json:1:2: invalid JSON: /);
    usage(
      () => parseConfig('{\n  "mappings": [\n    {"listen": 1,,}\n  ]\n}', 'c.json'),
      /^c.json:3:18: invalid JSON: /,
    );
    usage(() => parseConfig('[1, 2', 'c.json'), /^c.json:1:6: invalid JSON: /);
    usage(cfg(42), /expected an object with "mappings" or an array/);
    usage(cfg({}), /"mappings" is missing/);
    usage(cfg({ mappings: {} }), /^c.json: mappings must be an array/);
    usage(
      cfg({ mappings: [], extra: 1 }),
      /^c.json: extra is not a known setting \(expected one of: mappings, engine/,
    );
    usage(cfg({ engine: 'x', mappings: [] }), /^c.json: engine must be one of 'splice', 'stream', got "x"$/);
    usage(cfg({ threads: 0, mappings: [] }), /^c.json: threads must be an integer from 1 to 64, got 0$/);
    usage(
      cfg({ drainTimeout: -1, mappings: [] }),
      /^c.json: drainTimeout must be a number of seconds from 0/,
    );
    usage(cfg({ metrics: 9464, mappings: [] }), /^c.json: metrics must be a string/);
    usage(cfg({ json: 'yes', mappings: [] }), /^c.json: json must be true or false/);
    usage(cfg([5]), /^c.json: mappings\[0\] must be an object or a -p string/);
    usage(cfg([{ listen: { port: 1 } }]), /^c.json: mappings\[0\].target is required$/);
    usage(cfg([{ target: { host: 'a', port: 1 } }]), /^c.json: mappings\[0\].listen is required$/);
    usage(
      cfg([{ listen: { port: 70000 }, target: { host: 'a', port: 1 } }]),
      /^c.json: mappings\[0\].listen.port must be an integer from 0 to 65535, got 70000$/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { port: 1 } }]),
      /^c.json: mappings\[0\].target.host is required$/,
    );
    usage(
      cfg([{ listen: { port: 1, addr: 'x' }, target: { host: 'a', port: 1 } }]),
      /^c.json: mappings\[0\].listen.addr is not a known option/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 1 }, lissten: 1 }]),
      /^c.json: mappings\[0\].lissten is not a known option/,
    );
    usage(
      cfg([{ proto: 'icmp', listen: { port: 1 }, target: { host: 'a', port: 1 } }]),
      /^c.json: mappings\[0\].proto must be one of 'tcp', 'udp'/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 1 }, keepAlive: { idleMs: 1500 } }]),
      /^c.json: mappings\[0\].keepAlive.idleMs must be a whole number of seconds/,
    );
    usage(
      cfg([{ proto: 'udp', listen: { port: 1 }, target: { host: 'a', port: 1 }, keepAlive: false }]),
      /^c.json: mappings\[0\].keepAlive applies to TCP mappings only/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a b', port: 1 } }]),
      /^c.json: mappings\[0\].target.host must be an IPv4 or IPv6 address or a host name, got "a b"$/,
    );
    usage(cfg(['8080:80']), /^c.json: mappings\[0\] "8080:80": expected .*target address is missing/);
    usage(
      () => parseArgs(['--config', 'missing.json'], read),
      /cannot read config file "missing.json": ENOENT/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const HOST_NAME =
  /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;

/** A host as written in a spec and as parsed. */
const hostArb = fc.oneof(
  fc.ipV4().map((ip) => ({ text: ip, host: ip })),
  fc.ipV6().map((ip) => ({ text: `[${ip}]`, host: ip })),
  fc.domain().map((name) => ({ text: name, host: name })),
);

/** Two port ranges of equal length, within MAX_RANGE and 1..65535. */
const rangesArb = fc.integer({ min: 1, max: 300 }).chain((count) =>
  fc.record({
    count: fc.constant(count),
    host: fc.integer({ min: 1, max: 65536 - count }),
    target: fc.integer({ min: 1, max: 65536 - count }),
  }),
);

const rangeText = (first, count) =>
  count === 1 && first % 2 === 0 ? `${first}` : `${first}-${first + count - 1}`;

/** Everything a parsed mapping must satisfy, whatever the input was. */
function checkMapping(m) {
  assert.ok(m.proto === 'tcp' || m.proto === 'udp', `proto ${m.proto}`);
  assert.ok(Number.isInteger(m.listen.port) && m.listen.port >= 0 && m.listen.port <= 65535, 'listen.port');
  assert.ok(Number.isInteger(m.target.port) && m.target.port >= 1 && m.target.port <= 65535, 'target.port');
  for (const host of [m.listen.host, m.target.host]) {
    assert.ok(
      isIP(host) !== 0 || (HOST_NAME.test(host) && !/^[\d.]+$/.test(host)),
      `host ${JSON.stringify(host)}`,
    );
  }
  assert.deepEqual(Object.keys(m).sort(), ['listen', 'proto', 'target']);
}

const bracket = (host) => (host.includes(':') ? `[${host}]` : host);

describe('properties', () => {
  test('any equal-length ranges parse to exactly that many mappings, port by port', () => {
    fc.assert(
      fc.property(
        rangesArb,
        fc.option(hostArb, { nil: undefined }),
        hostArb,
        fc.constantFrom('', '/tcp', '/udp', '/UDP'),
        ({ count, host, target }, listenHost, targetHost, suffix) => {
          const spec =
            `${listenHost ? `${listenHost.text}:` : ''}${rangeText(host, count)}:` +
            `${targetHost.text}:${rangeText(target, count)}${suffix}`;
          const ms = opts(spec);
          assert.equal(ms.length, count);
          ms.forEach((m, i) => {
            assert.deepEqual(m, {
              proto: suffix === '' ? 'tcp' : suffix.slice(1).toLowerCase(),
              listen: { host: listenHost ? listenHost.host : '0.0.0.0', port: host + i },
              target: { host: targetHost.host, port: target + i },
            });
          });
        },
      ),
      { numRuns: 300 },
    );
  });

  test('ranges of different lengths are always rejected', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60000 }),
        fc.integer({ min: 1, max: 60000 }),
        fc.integer({ min: 1, max: 2000 }),
        fc.integer({ min: 1, max: 2000 }),
        (a, b, n, k) => {
          fc.pre(n !== k && k !== 1); // a host range to one target port picks a port of the range
          usage(() => parsePortSpec(`${a}-${a + n - 1}:10.0.0.1:${b}-${b + k - 1}`), /same length/);
        },
      ),
    );
  });

  // Strings made of the characters specs are made of, so that many come close to valid.
  const specChars = fc.constantFrom(
    ...'0123456789:::---[]..//abcdefxtpu '.split(''),
    '65535',
    '70000',
    '::1',
    'udp',
  );
  const specLike = fc.array(specChars, { maxLength: 30 }).map((parts) => parts.join(''));

  // Specs put together from valid and invalid parts, so that a good share of them parse.
  const portText = fc.oneof(
    fc.integer({ min: 0, max: 70000 }).map(String),
    fc
      .tuple(fc.integer({ min: 0, max: 66000 }), fc.integer({ min: -3, max: 12000 }))
      .map(([a, n]) => `${a}-${a + n}`),
    fc.constantFrom('', '-', '1-', '-1', '08', 'x', '1-2-3'),
  );
  const portPair = fc.oneof(
    {
      weight: 3,
      arbitrary: rangesArb.map(({ count, host, target }) => [
        rangeText(host, count),
        rangeText(target, count),
      ]),
    },
    { weight: 1, arbitrary: fc.tuple(portText, portText) },
  );
  const hostText = fc.oneof(
    { weight: 3, arbitrary: hostArb.map((h) => h.text) },
    {
      weight: 1,
      arbitrary: fc.constantFrom('', '::1', '[1.2.3.4]', '[::1', 'a_b', '999.1.1.1', '1.2.3', '[]', '-a.com'),
    },
  );
  const structured = fc
    .tuple(
      fc.option(hostText, { nil: undefined }),
      portPair,
      hostText,
      fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom('', '/tcp', '/udp', '/UDP') },
        { weight: 1, arbitrary: fc.constantFrom('/sctp', '/', '/x') },
      ),
      fc.oneof(
        { weight: 6, arbitrary: fc.constant('') },
        { weight: 1, arbitrary: fc.constantFrom(':', ':1', ' ') },
      ),
    )
    .map(
      ([lh, [hp, tp], th, suffix, extra]) =>
        `${lh === undefined ? '' : `${lh}:`}${hp}:${th}:${tp}${extra}${suffix}`,
    );

  /** The property for one string; returns whether it parsed. */
  function checkSpec(spec) {
    let ms;
    try {
      ms = opts(spec);
    } catch (err) {
      assert.ok(err instanceof UsageError, `not a UsageError for ${JSON.stringify(spec)}: ${err?.stack}`);
      assert.ok(err.message.length > 0);
      return false;
    }
    assert.ok(ms.length >= 1 && ms.length <= MAX_RANGE);
    ms.forEach(checkMapping);
    // Written back one port at a time, each mapping parses to itself.
    for (const m of ms) {
      const again = opts(
        `${bracket(m.listen.host)}:${m.listen.port}:${bracket(m.target.host)}:${m.target.port}/${m.proto}`,
      );
      assert.deepEqual(again, [m]);
    }
    return true;
  }

  test('near-valid specs either throw a UsageError or give well-formed mappings that round-trip', () => {
    let parsed = 0;
    fc.assert(
      fc.property(structured, (spec) => {
        if (checkSpec(spec)) parsed++;
      }),
      { numRuns: 2000 },
    );
    assert.ok(parsed > 200, `only ${parsed} of 2000 specs were valid: the generator needs work`);
  });

  test('any string either throws a UsageError or gives well-formed mappings', () => {
    fc.assert(
      fc.property(
        fc.oneof(specLike, fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 20 })),
        (spec) => {
          checkSpec(spec);
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('any argument list either throws a UsageError or gives well-formed options', () => {
    const token = fc.oneof(
      fc.constantFrom(
        '-p',
        '--publish',
        '--json',
        '--engine',
        'stream',
        '--threads',
        '--interval',
        '--metrics',
        '--drain-timeout',
        '-host-port',
        '-container-ip',
        '-container-port',
        '-proto',
        'udp',
        '-use-listen-fd',
        '1',
        '0.5',
        '127.0.0.1',
        '80:10.0.0.1:80',
        '1-3:10.0.0.1:4-6/udp',
        '--',
      ),
      specLike,
      fc.string({ maxLength: 10 }),
    );
    fc.assert(
      fc.property(fc.array(token, { maxLength: 8 }), (argv) => {
        let o;
        try {
          o = parseArgs(argv);
        } catch (err) {
          assert.ok(err instanceof UsageError, `not a UsageError for ${JSON.stringify(argv)}: ${err?.stack}`);
          return;
        }
        if (o.help || o.version) return;
        assert.ok(o.mappings.length >= 1);
        for (const { options, source } of o.mappings) {
          checkMapping(options);
          assert.equal(typeof source, 'string');
        }
        const { threads } = o.proxy;
        if (threads !== undefined && threads !== 'auto') {
          assert.ok(Number.isInteger(threads) && threads >= 1 && threads <= 64);
        }
        if (o.interval !== undefined) assert.ok(o.interval >= 0.05);
        assert.ok(o.drainTimeout >= 0);
      }),
      { numRuns: 3000 },
    );
  });
});
