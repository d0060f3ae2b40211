// Unit and property tests of the CLI's pure argument parser (dist/cli/args.js): -p specs,
// Go-style docker-proxy flags, the config file schema, and the errors for everything else.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import fc from 'fast-check';

import {
  parseArgs,
  parsePortSpec,
  parseConfig,
  parseListenAddress,
  UsageError,
  MAX_RANGE,
  DEFAULT_DRAIN_TIMEOUT,
} from '../dist/cli/args.js';

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

describe('-p specs', () => {
  test('the forms users know from docker run -p', () => {
    assert.deepEqual(parsePortSpec('8080:10.0.0.2:80'), [tcp('0.0.0.0', 8080, '10.0.0.2', 80)]);
    assert.deepEqual(parsePortSpec('127.0.0.1:8080:10.0.0.2:80'), [tcp('127.0.0.1', 8080, '10.0.0.2', 80)]);
    assert.deepEqual(parsePortSpec('127.0.0.1:53:10.0.0.2:53/udp'), [udp('127.0.0.1', 53, '10.0.0.2', 53)]);
    assert.deepEqual(parsePortSpec('53:10.0.0.2:53/UDP'), [udp('0.0.0.0', 53, '10.0.0.2', 53)]);
    assert.deepEqual(parsePortSpec('8080:10.0.0.2:80/tcp'), [tcp('0.0.0.0', 8080, '10.0.0.2', 80)]);
    assert.deepEqual(parsePortSpec('localhost:8080:db.internal:5432'), [
      tcp('localhost', 8080, 'db.internal', 5432),
    ]);
    assert.deepEqual(parsePortSpec('0:10.0.0.2:80'), [tcp('0.0.0.0', 0, '10.0.0.2', 80)], 'host port 0: any');
    assert.deepEqual(parsePortSpec('08080:10.0.0.2:0080'), [tcp('0.0.0.0', 8080, '10.0.0.2', 80)]);
  });

  test('IPv6 addresses in brackets on either side', () => {
    assert.deepEqual(parsePortSpec('[::1]:8080:127.0.0.1:80'), [tcp('::1', 8080, '127.0.0.1', 80)]);
    assert.deepEqual(parsePortSpec('8080:[::1]:80'), [tcp('0.0.0.0', 8080, '::1', 80)]);
    assert.deepEqual(parsePortSpec('[::]:8080:[fd00::2]:80/udp'), [udp('::', 8080, 'fd00::2', 80)]);
    assert.deepEqual(parsePortSpec('[::ffff:127.0.0.1]:1:[2001:db8::1]:2'), [
      tcp('::ffff:127.0.0.1', 1, '2001:db8::1', 2),
    ]);
  });

  test('ranges map port to port', () => {
    const ms = parsePortSpec('8000-8099:10.1.0.2:9000-9099');
    assert.equal(ms.length, 100);
    ms.forEach((m, i) => assert.deepEqual(m, tcp('0.0.0.0', 8000 + i, '10.1.0.2', 9000 + i)));
    assert.deepEqual(parsePortSpec('5-5:1.2.3.4:7-7'), [tcp('0.0.0.0', 5, '1.2.3.4', 7)]);
    assert.equal(parsePortSpec(`1-${MAX_RANGE}:1.2.3.4:1-${MAX_RANGE}`).length, MAX_RANGE);
  });

  test('bad specs say what is wrong', () => {
    const bad = [
      ['', /needs a value/],
      ['8080', /expected \[HOST_IP:\]HOST_PORT:TARGET_IP:TARGET_PORT/],
      ['8080:80', /target address is missing/],
      ['8080:10.0.0.2', /target address is missing/],
      ['1.2.3.4:8080:10.0.0.2:80:90', /too many ':'/],
      ['::1:8080:127.0.0.1:80', /IPv6 addresses must be in brackets/],
      [':8080:10.0.0.2:80', /host IP is empty/],
      ['8080::80', /target IP is empty/],
      ['8080:10.0.0.2:', /ends with ':'/],
      ['70000:10.0.0.2:80', /host port must be a number from 0 to 65535, got "70000"/],
      ['8080:10.0.0.2:0', /target port must be a number from 1 to 65535, got "0"/],
      ['8080:10.0.0.2:65536', /target port must be a number from 1 to 65535/],
      ['abc:10.0.0.2:80', /host port must be a number/],
      ['-1:10.0.0.2:80', /host port range start must be a number/],
      ['+80:10.0.0.2:80', /host port must be a number/],
      ['0-5:10.0.0.2:0-5', /host port range start must be a number from 1 to 65535, got "0"/],
      ['8010-8000:10.0.0.2:8000-8010', /reversed: 8010 is greater than 8000/],
      ['65530-65536:10.0.0.2:1-7', /range end must be a number from 1 to 65535, got "65536"/],
      [`1-${MAX_RANGE + 1}:10.0.0.2:1-${MAX_RANGE + 1}`, /has 10001 ports; at most 10000/],
      [
        '8000-8002:10.0.0.2:80',
        /host side has 3 ports and the target side 1; port ranges must be the same length/,
      ],
      ['80:10.0.0.2:8000-8002', /host side has 1 port and the target side 3/],
      ['8000-8002:10.0.0.2:9000-9003', /same length/],
      ['8000-:10.0.0.2:80', /range end must be a number/],
      ['8000-8001-8002:10.0.0.2:80-81', /range end must be a number/],
      ['8080:10.0.0.2:80/sctp', /sctp is not supported/],
      ['8080:10.0.0.2:80/http', /protocol must be tcp or udp, got "http"/],
      ['8080:10.0.0.2:80/', /protocol must be tcp or udp, got ""/],
      ['8080:10.0.0.2:80/tcp/udp', /target port must be a number from 1 to 65535, got "80\/tcp"/],
      ['8080:10.0.0.2: 80', /whitespace/],
      ['[1.2.3.4]:8080:10.0.0.2:80', /"1.2.3.4" in brackets is not an IPv6 address/],
      ['[::1:8080:10.0.0.2:80', /unclosed '\['/],
      ['[::1]x:8080:10.0.0.2:80', /expected ':' after "\[::1\]"/],
      ['::1]:8080:10.0.0.2:80', /bracket|too many/],
      ['999.1.1.1:8080:10.0.0.2:80', /"999.1.1.1" is not an IP address or host name/],
      ['8080:bad_name!:80', /target IP: "bad_name!" is not an IP address or host name/],
      ['8080:10.0.0.2:80:', /ends with ':' where the target port should be/],
    ];
    for (const [spec, message] of bad) usage(() => parsePortSpec(spec), message);
  });
});

describe('flags', () => {
  test('defaults', () => {
    const o = parseArgs(['-p', '8080:10.0.0.2:80']);
    assert.deepEqual(o.mappings, [
      { options: tcp('0.0.0.0', 8080, '10.0.0.2', 80), source: '-p 8080:10.0.0.2:80' },
    ]);
    assert.equal(o.json, false);
    assert.equal(o.interval, undefined);
    assert.equal(o.engine, undefined);
    assert.equal(o.threads, undefined);
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
      '--json',
      '--interval',
      '0.5',
      '--metrics',
      '127.0.0.1:9100',
      '--drain-timeout=2.5',
      '-p',
      '1:1.1.1.1:1',
    ]);
    assert.equal(o.engine, 'stream');
    assert.equal(o.threads, 4);
    assert.equal(parseArgs(['--threads', 'auto', '-p', '1:1.1.1.1:1']).threads, 'auto');
    assert.equal(parseArgs(['-p', '1:1.1.1.1:1']).threads, undefined, 'unset: the library default, auto');
    assert.equal(o.json, true);
    assert.equal(o.interval, 0.5);
    assert.deepEqual(o.metrics, { host: '127.0.0.1', port: 9100 });
    assert.equal(o.drainTimeout, 2.5);
    assert.equal(parseArgs(['--json=false', '-p', '1:1.1.1.1:1']).json, false);
    assert.equal(parseArgs(['--drain-timeout', '0', '-p', '1:1.1.1.1:1']).drainTimeout, 0);
  });

  test('--metrics addresses', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:9100', 'm'), { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(parseListenAddress('[::1]:9100', 'm'), { host: '::1', port: 9100 });
    assert.deepEqual(parseListenAddress(':9100', 'm'), { host: '0.0.0.0', port: 9100 });
    assert.deepEqual(parseListenAddress('9100', 'm'), { host: '0.0.0.0', port: 9100 });
    assert.deepEqual(parseListenAddress('localhost:9100', 'm'), { host: 'localhost', port: 9100 });
    usage(() => parseListenAddress('::1:9100', '--metrics'), /--metrics/);
    usage(() => parseListenAddress('1.2.3.4:99999', '--metrics'), /--metrics port must be a number/);
    usage(() => parseListenAddress('[1.2.3.4]:9100', '--metrics'), /not an IPv6 address/);
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
      [['--engine', 'fast', '-p', '1:1.1.1.1:1'], /--engine must be splice or stream, got "fast"/],
      [['--threads', '0', '-p', '1:1.1.1.1:1'], /--threads must be auto or a number from 1 to 64, got "0"/],
      [['--threads', '65', '-p', '1:1.1.1.1:1'], /from 1 to 64/],
      [['--threads', '2.5', '-p', '1:1.1.1.1:1'], /from 1 to 64/],
      [['--interval', '0', '-p', '1:1.1.1.1:1'], /--interval must be a number of seconds from 0.05/],
      [['--interval', 'soon', '-p', '1:1.1.1.1:1'], /--interval must be a number of seconds/],
      [['--drain-timeout', '-1', '-p', '1:1.1.1.1:1'], /--drain-timeout needs a value/],
      [['--drain-timeout=-1', '-p', '1:1.1.1.1:1'], /--drain-timeout must be a number of seconds from 0/],
      [['--json=maybe', '-p', '1:1.1.1.1:1'], /--json takes no value \(or true\/false\), got "maybe"/],
      [['-p', '1:1.1.1.1:1', 'extra'], /unexpected argument: "extra"/],
      [['-p', '1:1.1.1.1:1', '--', 'extra'], /unexpected argument: "extra"/],
      [
        ['-p', '80:1.1.1.1:80', '-p', '127.0.0.1:80:1.1.1.1:81', '-p', '80:2.2.2.2:90'],
        /tcp 0.0.0.0:80 is mapped twice/,
      ],
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
  test('one mapping from -host-ip/-host-port/-container-ip/-container-port, in Go flag syntax', () => {
    const o = parseArgs([
      '-proto',
      'udp',
      '-host-ip=::',
      '--host-port',
      '53',
      '-container-ip',
      '172.17.0.2',
      '--container-port=53',
    ]);
    assert.deepEqual(o.mappings, [
      { options: udp('::', 53, '172.17.0.2', 53), source: 'docker-proxy flags' },
    ]);
    const d = parseArgs(['-host-port', '8080', '-container-ip', '172.17.0.2', '-container-port', '80']);
    assert.deepEqual(d.mappings[0].options, tcp('0.0.0.0', 8080, '172.17.0.2', 80), 'defaults: tcp, 0.0.0.0');
    assert.equal(
      parseArgs([
        '-proto',
        'tcp6',
        '-host-ip',
        '::1',
        '-host-port',
        '1',
        '-container-ip',
        '::1',
        '-container-port',
        '2',
      ]).mappings[0].options.proto,
      'tcp',
    );
    // The last value of a flag wins, as with Go's flag package.
    assert.equal(
      parseArgs(['-host-port', '1', '-host-port', '2', '-container-ip', '1.1.1.1', '-container-port', '3'])
        .mappings[0].options.listen.port,
      2,
    );
  });

  test('errors', () => {
    const base = ['-host-port', '8080', '-container-ip', '172.17.0.2', '-container-port', '80'];
    usage(
      () => parseArgs(['-host-port', '8080', '-container-ip', '172.17.0.2']),
      /-container-port is required/,
    );
    usage(() => parseArgs(['-proto', 'udp']), /-host-port is required/);
    usage(() => parseArgs([...base, '-proto', 'sctp']), /sctp is not supported/);
    usage(() => parseArgs([...base, '-host-ip', 'localhost']), /-host-ip: "localhost" is not an IP address/);
    usage(
      () => parseArgs([...base.slice(0, 2), '-container-ip', 'x', '-container-port', '80']),
      /-container-ip/,
    );
    usage(
      () => parseArgs([...base.slice(0, 4), '-container-port', '0']),
      /-container-port must be a number from 1/,
    );
    usage(
      () => parseArgs([...base, '-use-listen-fd']),
      /-use-listen-fd is not supported by the Node CLI.*native/,
    );
    usage(() => parseArgs(['-use-listen-fd', '-p', '1:1.1.1.1:1']), /native/);
    assert.equal(parseArgs([...base, '-use-listen-fd=false']).useListenFd, false);
  });
});

describe('--config', () => {
  const files = {
    'full.json': JSON.stringify({
      engine: 'stream',
      threads: 2,
      pipeSize: 65536,
      maxPipes: 10,
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

  test('mappings as the API takes them, -p strings, proxy options', () => {
    const o = parseArgs(['--config', 'full.json'], read);
    assert.equal(o.engine, 'stream');
    assert.equal(o.threads, 2);
    assert.equal(o.pipeSize, 65536);
    assert.equal(o.maxPipes, 10);
    assert.deepEqual(
      o.mappings.map((m) => m.options),
      [
        { ...udp('0.0.0.0', 53, '10.0.0.2', 53), udpTimeoutMs: 30000, udpMaxFlows: 100 },
        {
          ...tcp('0.0.0.0', 8080, 'backend', 80),
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
    const a = parseArgs(['-c', 'array.json', '-p', '2:1.1.1.1:2', '--engine', 'splice'], read);
    assert.deepEqual(
      a.mappings.map((m) => m.options.listen.port),
      [1, 2],
    );
    assert.equal(
      parseArgs(['--engine', 'splice', '--config', 'full.json'], read).engine,
      'splice',
      'flags win',
    );
  });

  test('errors name the file and the field', () => {
    const cfg = (value) => () => parseConfig(JSON.stringify(value), 'c.json');
    usage(() => parseConfig('{', 'c.json'), /c.json: invalid JSON/);
    usage(cfg(42), /expected an object with "mappings" or an array/);
    usage(cfg({}), /"mappings" is missing/);
    usage(cfg({ mappings: {} }), /c.json: mappings must be an array/);
    usage(cfg({ mappings: [], extra: 1 }), /c.json.extra is not a known option/);
    usage(cfg({ engine: 'x', mappings: [] }), /c.json.engine must be splice or stream/);
    usage(cfg({ threads: 0, mappings: [] }), /c.json.threads must be an integer from 1 to 64/);
    usage(cfg([5]), /c.json\[0\] must be an object or a -p string/);
    usage(cfg([{ listen: { port: 1 } }]), /c.json\[0\].target must be an object/);
    usage(cfg([{ target: { host: 'a', port: 1 } }]), /c.json\[0\].listen must be an object/);
    usage(
      cfg([{ listen: { port: 70000 }, target: { host: 'a', port: 1 } }]),
      /c.json\[0\].listen.port must be an integer from 0 to 65535, got 70000/,
    );
    usage(cfg([{ listen: { port: 1 }, target: { port: 1 } }]), /c.json\[0\].target.host is required/);
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 0 } }]),
      /target.port must be an integer from 1 to 65535/,
    );
    usage(
      cfg([{ listen: { port: 1, addr: 'x' }, target: { host: 'a', port: 1 } }]),
      /listen.addr is not a known option/,
    );
    usage(
      cfg([{ proto: 'icmp', listen: { port: 1 }, target: { host: 'a', port: 1 } }]),
      /proto: protocol must be tcp or udp/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 1 }, ipv6Only: 'yes' }]),
      /ipv6Only must be a boolean/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 1 }, keepAlive: { idleMs: 1500 } }]),
      /c.json\[0\].keepAlive.idleMs must be a whole number of seconds/,
    );
    usage(
      cfg([{ proto: 'udp', listen: { port: 1 }, target: { host: 'a', port: 1 }, keepAlive: false }]),
      /c.json\[0\].keepAlive applies to TCP mappings only/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a', port: 1 }, udpTimeoutMs: 0 }]),
      /udpTimeoutMs must be an integer/,
    );
    usage(
      cfg([{ listen: { port: 1 }, target: { host: 'a b', port: 1 } }]),
      /target.host: "a b" is not an IP address or host name/,
    );
    usage(cfg(['8080:80']), /target address is missing/);
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
          const ms = parsePortSpec(spec);
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
          fc.pre(n !== k);
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
      ms = parsePortSpec(spec);
    } catch (err) {
      assert.ok(err instanceof UsageError, `not a UsageError for ${JSON.stringify(spec)}: ${err?.stack}`);
      assert.ok(err.message.length > 0);
      return false;
    }
    assert.ok(ms.length >= 1 && ms.length <= MAX_RANGE);
    ms.forEach(checkMapping);
    // Written back one port at a time, each mapping parses to itself.
    for (const m of ms) {
      const again = parsePortSpec(
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
        if (o.threads !== undefined)
          assert.ok(Number.isInteger(o.threads) && o.threads >= 1 && o.threads <= 64);
        if (o.interval !== undefined) assert.ok(o.interval >= 0.05);
        assert.ok(o.drainTimeout >= 0);
        assert.equal(o.useListenFd, false);
      }),
      { numRuns: 3000 },
    );
  });
});
