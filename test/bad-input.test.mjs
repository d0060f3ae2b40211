// @test-tag slow: about 35 s of property tests
// Bad input, generated with fast-check: every option of the API (createProxy, add, close,
// remove), the CLI's config files, --metrics and docker-proxy flags, and the drop-in binary's
// flags get wrong values (types, ranges, malformed addresses, absurd sizes, unknown keys).
// Each must give a clear error naming the field, and nothing may start half-way: no mapping,
// no listening socket, no thread, no process left running. The command checks values with the
// library's validation: here it must put the location in front, never crash, and exit 2 with
// one line. (The CLI's -p specs and argument lists have property tests in cli-args.test.mjs.)

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import dgram from 'node:dgram';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';

import { createProxy, dockerProxyPath } from '../dist/index.js';
import { validateMapping, validateProxyOptions } from '../dist/config.js';
import { parseArgs } from '../dist/cli/args.js';
import { parseConfig } from '../dist/cli/config-file.js';
import { parseListenAddress } from '../dist/cli/endpoint.js';
// The library's own key list: a key it knows is never generated as an unknown one.
import { MAPPING_KEYS } from '../dist/config.js';
import { OPTIONS } from '../dist/cli/options.js';
import { UsageError } from '../dist/cli/where.js';
import {
  V4,
  canBind,
  withTimeout,
  startEchoServer,
  freePort,
  exchange,
  safeClose,
  closeServers,
  show,
} from './helpers.mjs';
import { CLI_PATH, spawnChild, killChildren, socketInodes, threadCount, fdCount } from './fault-helpers.mjs';

after(killChildren);

// Failure reports show the assertion that failed, not only the counterexample.
fc.configureGlobal({ includeErrorInReport: true });

// ---------------------------------------------------------------------------------------------
// What is valid, from the documentation (README, src/types.ts)
// ---------------------------------------------------------------------------------------------

const INT32_MAX = 2 ** 31 - 1;

/** RFC 1123 host name syntax, at most 253 characters; digits and dots alone are a bad IPv4 address. */
const HOST_NAME =
  /^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;
const validHost = (v) =>
  typeof v === 'string' && (isIP(v) !== 0 || (HOST_NAME.test(v) && !/^[\d.]+$/.test(v)));

/** The keys add() takes. */

/** Ranges of the integer options of the API. */
const RANGES = {
  threads: [1, 64],
  pipeSize: [4096, 1 << 20],
  maxPipes: [0, INT32_MAX],
  'listen.port': [0, 65535],
  'target.port': [1, 65535],
  connectTimeoutMs: [1, INT32_MAX],
  backlog: [1, 65535],
  udpTimeoutMs: [1, INT32_MAX],
  udpMaxFlows: [1, 1 << 20],
  drainTimeoutMs: [0, INT32_MAX],
};

// ---------------------------------------------------------------------------------------------
// Generators of wrong values
// ---------------------------------------------------------------------------------------------

/** Anything that is not a number (undefined excluded: it means "the default"). */
const notANumber = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.constantFrom('80', '0x50', '', ' 1', '1e3', 'NaN', 'Infinity'),
  fc.boolean(),
  fc.constant(null),
  fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }),
  fc.array(fc.integer(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 4 }), fc.integer(), { maxKeys: 2 }),
  fc.constantFrom(Symbol('port'), () => 80, new Number(80), new Date(0), { valueOf: () => 80 }),
);

/** Wrong values for an integer option that must lie in [min, max]. */
const wrongInt = ([min, max]) =>
  fc.oneof(
    notANumber,
    fc.constantFrom(NaN, Infinity, -Infinity, 0.5, -0.5, min + 0.5, max - 0.5, 1e-300),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Number.isInteger(x)),
    fc.integer({ min: Number.MIN_SAFE_INTEGER, max: min - 1 }),
    fc.integer({ min: max + 1, max: Number.MAX_SAFE_INTEGER }),
    fc.constantFrom(min - 1, max + 1, 2 ** 53, -(2 ** 53), 1e21, Number.MAX_VALUE, -Number.MAX_VALUE),
  );

/** Wrong values for a boolean option. */
const wrongBool = fc.oneof(
  notANumber.filter((v) => typeof v !== 'boolean'),
  fc.constantFrom(0, 1, 'true', 'false', 'yes'),
);

/** Wrong values for a string option that must be one of `choices`. */
const wrongChoice = (choices) =>
  fc.oneof(
    fc.string({ maxLength: 10 }).filter((s) => !choices.includes(s)),
    fc.constantFrom(...choices.flatMap((c) => [c.toUpperCase(), ` ${c}`, `${c} `, `${c}\0`, `${c}6`])),
    notANumber.filter((v) => typeof v !== 'string'),
    fc.integer(),
  );

/** Malformed hosts: not an IP literal, not a host name. */
const wrongHost = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 20 }).filter((s) => !validHost(s)),
  fc
    .constantFrom(
      '',
      ' ',
      '999.1.1.1',
      '1.2.3',
      '1.2.3.4.5',
      '01.02.03.004.5',
      '::1::1',
      '[::1]',
      'fe80::1%',
      'a..b',
      '-a.com',
      'a-.com',
      'a_b.com',
      'x'.repeat(64),
      `${'a.'.repeat(127)}ab`,
      'ho st',
      'localhost:80',
      '1.2.3.4/24',
      'mañana.com',
      'host\n',
      '\0',
      '*.example.com',
    )
    .filter((s) => !validHost(s)),
  notANumber.filter((v) => typeof v !== 'string'),
  fc.integer(),
);

/** Wrong values where an object is expected (arrays, primitives, null). */
const notAnObject = fc.oneof(
  fc.string({ maxLength: 10 }),
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.anything({ maxDepth: 1 }), { maxLength: 3 }),
  fc.constantFrom(Symbol('o'), 0n, () => ({})),
);

/** A key that is none of `allowed` (any string, '__proto__' and friends included). */
const unknownKey = (allowed) =>
  fc
    .oneof(
      fc.string({ maxLength: 12 }),
      fc.constantFrom('__proto__', 'constructor', 'toString', 'Port', 'host ', 'engines'),
    )
    .filter((k) => !allowed.includes(k));

/** `object` with an own property `key` (safe for '__proto__'). */
const withKey = (object, key, value) => ({ ...object, ...Object.fromEntries([[key, value]]) });

/** A short description of a generated value for messages (Symbols and bigints included). */
const describeValue = (v) => {
  try {
    return typeof v === 'symbol' || typeof v === 'function' ? String(v) : show(v);
  } catch {
    return String(v);
  }
};

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

/** Assert `err` is a TypeError or RangeError whose message names one of `fields`. */
function assertNamesField(err, fields, what) {
  assert.ok(
    err instanceof TypeError || err instanceof RangeError,
    `${what}: expected a TypeError or RangeError, got ${err?.name}: ${err?.message}`,
  );
  assert.ok(
    fields.some((f) => err.message.includes(f)),
    `${what}: the message ${JSON.stringify(err.message)} should name ${fields.join(' or ')}`,
  );
}

describe('createProxy() options', () => {
  const ALLOWED = ['engine', 'threads', 'pipeSize', 'maxPipes'];

  /** createProxy(options) must throw at once, naming a field, and start no thread or descriptor. */
  async function expectRejected(options, fields) {
    const threads = threadCount();
    const fds = fdCount();
    let proxy;
    let error;
    try {
      proxy = createProxy(options);
    } catch (err) {
      error = err;
    }
    if (proxy) {
      await safeClose(proxy);
      assert.fail(
        `createProxy(${describeValue(options)}) returned a proxy; expected an error naming ${fields}`,
      );
    }
    assertNamesField(error, fields, `createProxy(${describeValue(options)})`);
    assert.equal(threadCount(), threads, 'no thread was started');
    assert.equal(fdCount(), fds, 'no descriptor was opened');
  }

  const fields = [
    ['engine', wrongChoice(['splice', 'stream'])],
    ...['threads', 'pipeSize', 'maxPipes'].map((f) => [f, wrongInt(RANGES[f])]),
  ];
  for (const [field, wrong] of fields) {
    test(`wrong ${field}: a TypeError or RangeError naming it`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom('splice', 'stream'), wrong, async (engine, value) => {
          const base = field === 'engine' ? {} : { engine };
          await expectRejected(withKey(base, field, value), [field]);
        }),
        { numRuns: 150 },
      );
    });
  }

  test('unknown keys, and options that are not an object', async () => {
    await fc.assert(
      fc.asyncProperty(unknownKey(ALLOWED), fc.anything({ maxDepth: 1 }), async (key, value) => {
        await expectRejected(withKey({ engine: 'splice' }, key, value), [`options.${key}`]);
      }),
      { numRuns: 150 },
    );
    await fc.assert(
      fc.asyncProperty(notAnObject, async (options) => {
        await expectRejected(options, ['options']);
      }),
      { numRuns: 100 },
    );
  });

  test('several wrong fields at once: the error names one of them', async () => {
    const wrongs = {
      engine: wrongChoice(['splice', 'stream']),
      threads: wrongInt(RANGES.threads),
      pipeSize: wrongInt(RANGES.pipeSize),
      maxPipes: wrongInt(RANGES.maxPipes),
    };
    await fc.assert(
      fc.asyncProperty(fc.record(wrongs, { requiredKeys: [] }), async (options) => {
        fc.pre(Object.keys(options).length >= 2);
        await expectRejected(options, Object.keys(options));
      }),
      { numRuns: 100 },
    );
  });
});

for (const engine of ['splice', 'stream']) {
  describe(`add(), close() and remove() options [${engine}]`, () => {
    let proxy;
    let echo;
    let good; // a mapping that must survive every rejected call

    before(async () => {
      echo = await startEchoServer();
      proxy = createProxy({ engine, threads: 1 });
      good = await proxy.add({
        proto: 'tcp',
        listen: { host: V4, port: 0 },
        target: { host: V4, port: echo.port },
      });
    });

    after(async () => {
      await safeClose(proxy);
      await closeServers(echo);
    });

    /** A valid mapping to spoil: tcp or udp, v4 or v6, with or without the optional fields. */
    const validBase = fc.record(
      {
        proto: fc.constantFrom('tcp', 'udp'),
        listen: fc.record(
          { host: fc.constantFrom(V4, '::1', '0.0.0.0'), port: fc.constant(0) },
          { requiredKeys: ['port'] },
        ),
        target: fc.record({
          host: fc.constantFrom(V4, '::1', 'localhost'),
          port: fc.integer({ min: 1, max: 65535 }),
        }),
        connectTimeoutMs: fc.integer({ min: 1, max: INT32_MAX }),
        backlog: fc.integer({ min: 1, max: 65535 }),
        ipv6Only: fc.boolean(),
        udpTimeoutMs: fc.integer({ min: 1, max: INT32_MAX }),
        udpMaxFlows: fc.integer({ min: 1, max: 1 << 20 }),
      },
      { requiredKeys: ['proto', 'listen', 'target'] },
    );

    /** add(options) must reject (not throw), naming a field; no mapping and no socket appear. */
    async function expectAddRejected(options, fields) {
      const mappings = proxy.stats().mappings;
      const sockets = socketInodes();
      let promise;
      try {
        promise = proxy.add(options);
      } catch (err) {
        assert.fail(`add() threw synchronously instead of rejecting: ${err?.stack}`);
      }
      assert.ok(promise instanceof Promise, 'add() returns a promise');
      const outcome = await withTimeout(
        promise.then(
          (m) => ({ mapping: m }),
          (err) => ({ err }),
        ),
        5000,
        `add(${describeValue(options)})`,
      );
      if (outcome.mapping) {
        await proxy.remove(outcome.mapping);
        assert.fail(`add(${describeValue(options)}) was accepted; expected an error naming ${fields}`);
      }
      assertNamesField(outcome.err, fields, `add(${describeValue(options)})`);
      assert.deepEqual(proxy.stats().mappings, mappings, 'the mappings are as before');
      assert.deepEqual(socketInodes(), sockets, 'no socket was opened (nothing listens)');
    }

    const spoilers = [
      ['proto', wrongChoice(['tcp', 'udp']), (o, v) => ({ ...o, proto: v })],
      ['listen', fc.oneof(notAnObject, fc.constant(undefined)), (o, v) => ({ ...o, listen: v })],
      ['listen.host', wrongHost, (o, v) => ({ ...o, listen: { ...o.listen, host: v } })],
      [
        'listen.port',
        fc.oneof(wrongInt(RANGES['listen.port']), fc.constant(undefined)),
        (o, v) => ({ ...o, listen: { ...o.listen, port: v } }),
      ],
      ['target', fc.oneof(notAnObject, fc.constant(undefined)), (o, v) => ({ ...o, target: v })],
      [
        'target.host',
        fc.oneof(wrongHost, fc.constant(undefined)),
        (o, v) => ({ ...o, target: { ...o.target, host: v } }),
      ],
      [
        'target.port',
        fc.oneof(wrongInt(RANGES['target.port']), fc.constant(undefined)),
        (o, v) => ({ ...o, target: { ...o.target, port: v } }),
      ],
      ...['connectTimeoutMs', 'backlog', 'udpTimeoutMs', 'udpMaxFlows'].map((f) => [
        f,
        wrongInt(RANGES[f]),
        (o, v) => ({ ...o, [f]: v }),
      ]),
      ['ipv6Only', wrongBool, (o, v) => ({ ...o, ipv6Only: v })],
    ];

    for (const [field, wrong, spoil] of spoilers) {
      test(`add() with a wrong ${field}: rejects naming it; nothing listens`, async () => {
        await fc.assert(
          fc.asyncProperty(validBase, wrong, async (base, value) => {
            await expectAddRejected(spoil(base, value), [field]);
          }),
          { numRuns: 100 },
        );
      });
    }

    test('add() with unknown keys at any level, or a mapping that is not an object', async () => {
      const levels = [
        ['mapping', (o, k, v) => withKey(o, k, v), MAPPING_KEYS],
        ['listen', (o, k, v) => ({ ...o, listen: withKey(o.listen, k, v) }), ['host', 'port']],
        ['target', (o, k, v) => ({ ...o, target: withKey(o.target, k, v) }), ['host', 'port']],
      ];
      for (const [level, put, allowed] of levels) {
        await fc.assert(
          fc.asyncProperty(
            validBase,
            unknownKey(allowed),
            fc.anything({ maxDepth: 1 }),
            async (base, key, value) => {
              await expectAddRejected(put(base, key, value), [`${level}.${key}`]);
            },
          ),
          { numRuns: 60 },
        );
      }
      await fc.assert(
        fc.asyncProperty(fc.oneof(notAnObject, fc.constant(undefined)), async (options) => {
          await expectAddRejected(options, ['mapping']);
        }),
        { numRuns: 60 },
      );
    });

    test('add() with several wrong fields: the error names one of them', async () => {
      const spoiled = fc
        .uniqueArray(fc.integer({ min: 0, max: spoilers.length - 1 }), { minLength: 2, maxLength: 4 })
        .chain((which) => fc.tuple(fc.constant(which), fc.tuple(...which.map((i) => spoilers[i][1]))));
      await fc.assert(
        fc.asyncProperty(validBase, spoiled, async (base, [which, values]) => {
          let options = base;
          which.forEach((i, k) => (options = spoilers[i][2](options, values[k])));
          await expectAddRejected(
            options,
            which.map((i) => spoilers[i][0]),
          );
        }),
        { numRuns: 100 },
      );
    });

    test('close() with wrong options rejects naming the field and closes nothing', async () => {
      const cases = fc.oneof(
        notAnObject.map((options) => ({ options, fields: ['options'] })),
        wrongInt(RANGES.drainTimeoutMs).map((v) => ({
          options: { drainTimeoutMs: v },
          fields: ['drainTimeoutMs'],
        })),
        unknownKey(['drainTimeoutMs']).map((k) => ({ options: withKey({}, k, 1), fields: [`options.${k}`] })),
      );
      await fc.assert(
        fc.asyncProperty(cases, async ({ options, fields }) => {
          let promise;
          try {
            promise = proxy.close(options);
          } catch (err) {
            assert.fail(`close() threw synchronously instead of rejecting: ${err?.stack}`);
          }
          const err = await withTimeout(
            promise.then(
              () => undefined,
              (e) => e,
            ),
            5000,
            'close()',
          );
          assert.ok(err, `close(${describeValue(options)}) resolved: the proxy was closed by bad options`);
          assertNamesField(err, fields, `close(${describeValue(options)})`);
          assert.equal(proxy.closed, false, 'the proxy is not closed');
        }),
        { numRuns: 150 },
      );
      const got = await exchange(good.listen.port, V4, Buffer.from('still open'), { keep: true });
      assert.equal(got.data.toString(), 'still open', 'the mapping still forwards');
    });

    test('remove() of anything that is not one of its mappings rejects and removes nothing', async () => {
      const junk = fc
        .oneof(
          fc.anything({ maxDepth: 2 }),
          fc.integer(),
          fc.record({ id: fc.oneof(fc.integer(), fc.string(), fc.constant(undefined)) }),
        )
        .filter((v) => v !== good.id && v?.id !== good.id);
      await fc.assert(
        fc.asyncProperty(junk, async (value) => {
          const err = await withTimeout(
            proxy.remove(value).then(
              () => undefined,
              (e) => e,
            ),
            5000,
            'remove()',
          );
          assert.ok(err instanceof Error, `remove(${describeValue(value)}) resolved`);
          assert.equal(err.code, 'ERR_UNKNOWN_MAPPING', err.message);
          assert.match(err.message, /mapping .* is not active on this proxy/);
          assert.deepEqual(
            proxy.stats().mappings.map((m) => m.id),
            [good.id],
          );
        }),
        { numRuns: 150 },
      );
      const got = await exchange(good.listen.port, V4, Buffer.from('still here'), { keep: true });
      assert.equal(got.data.toString(), 'still here');
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The CLI: config files, --metrics, docker-proxy's flags
// ---------------------------------------------------------------------------------------------

/** parseConfig's outcome: `{ config }` or `{ error }` (anything but a UsageError fails). */
function cliParse(text) {
  try {
    return { config: parseConfig(text, 'c.json') };
  } catch (err) {
    assert.ok(err instanceof UsageError, `parseConfig threw ${err?.stack ?? err} instead of a UsageError`);
    return { error: err };
  }
}

/** The API's verdict on a mapping or proxy options: `{ ok }` or `{ error }`. */
function apiVerdict(validate, value) {
  try {
    validate(value);
    return { ok: true };
  } catch (error) {
    return { error };
  }
}

/** JSON values close to the edges of every range, and JSON junk. */
const jsonEdges = fc.oneof(
  fc.constantFrom(
    -1,
    0,
    1,
    4095,
    4096,
    65535,
    65536,
    2 ** 20,
    2 ** 20 + 1,
    INT32_MAX,
    INT32_MAX + 1,
    1.5,
    1e21,
  ),
  fc.integer({ min: -10, max: 70000 }),
  fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  fc.jsonValue({ maxDepth: 1 }),
  fc.constantFrom(
    'tcp',
    'udp',
    'TCP',
    'Udp',
    'sctp',
    'splice',
    'stream',
    '127.0.0.1',
    '::1',
    'localhost',
    'a b',
    true,
    false,
  ),
);

describe('CLI config files', () => {
  const mappingFields = {
    proto: (m, v) => ({ ...m, proto: v }),
    listen: (m, v) => ({ ...m, listen: v }),
    'listen.host': (m, v) => ({ ...m, listen: { ...m.listen, host: v } }),
    'listen.port': (m, v) => ({ ...m, listen: { ...m.listen, port: v } }),
    target: (m, v) => ({ ...m, target: v }),
    'target.host': (m, v) => ({ ...m, target: { ...m.target, host: v } }),
    'target.port': (m, v) => ({ ...m, target: { ...m.target, port: v } }),
    connectTimeoutMs: (m, v) => ({ ...m, connectTimeoutMs: v }),
    backlog: (m, v) => ({ ...m, backlog: v }),
    ipv6Only: (m, v) => ({ ...m, ipv6Only: v }),
    udpTimeoutMs: (m, v) => ({ ...m, udpTimeoutMs: v }),
    udpMaxFlows: (m, v) => ({ ...m, udpMaxFlows: v }),
  };
  const base = {
    proto: 'udp',
    listen: { host: '127.0.0.1', port: 5353 },
    target: { host: '10.0.0.2', port: 53 },
  };

  test('a mapping field is rejected when the API rejects it, at file: mappings[i].field', () => {
    fc.assert(
      fc.property(fc.constantFrom(...Object.keys(mappingFields)), jsonEdges, (field, value) => {
        const text = JSON.stringify({ mappings: [mappingFields[field](base, value)] });
        const raw = JSON.parse(text).mappings[0]; // exactly what the file says
        const cli = cliParse(text);
        const api = apiVerdict(validateMapping, raw);
        const what = `${field} = ${text}`;
        if (cli.error) {
          assert.ok(!api.ok, `${what}: the API accepts it, the CLI says ${cli.error.message}`);
          assert.ok(
            cli.error.message.includes(`c.json: mappings[0].${field}`),
            `${what}: the CLI's message ${JSON.stringify(cli.error.message)} should name mappings[0].${field}`,
          );
        } else {
          const check = apiVerdict(validateMapping, cli.config.mappings[0].options);
          assert.ok(
            check.ok,
            `${what}: the CLI accepts it, so the API must accept what the CLI makes of it; ` +
              `it says: ${check.error?.message} (the CLI would start, then fail with exit 1 instead of 2)`,
          );
        }
      }),
      {
        numRuns: 3000,
        // Every range edge, whatever the generator draws.
        examples: Object.keys(mappingFields).flatMap((field) => {
          const [min, max] = RANGES[field] ?? [1, 1];
          return [min - 1, min, max, max + 1].map((v) => [field, v]);
        }),
      },
    );
  });

  test('proxy options (engine, threads, pipeSize, maxPipes) are rejected at file: field when createProxy rejects them', () => {
    fc.assert(
      fc.property(fc.constantFrom('engine', 'threads', 'pipeSize', 'maxPipes'), jsonEdges, (field, value) => {
        const text = JSON.stringify({ [field]: value, mappings: ['1:1.1.1.1:1'] });
        const raw = JSON.parse(text);
        const cli = cliParse(text);
        const api = apiVerdict((o) => validateProxyOptions(o, 'splice'), { [field]: raw[field] });
        if (cli.error) {
          assert.ok(!api.ok, `${text}: the API accepts it, the CLI says ${cli.error.message}`);
          assert.ok(
            cli.error.message.startsWith(`c.json: ${field} `),
            `${text}: ${cli.error.message} should name ${field}`,
          );
        } else {
          assert.ok(
            api.ok || raw[field] === undefined,
            `${text}: the CLI accepts it, createProxy says ${api.error?.message}`,
          );
        }
      }),
      { numRuns: 1500 },
    );
  });

  test('unknown keys at any level are rejected by name', () => {
    const settings = OPTIONS.filter((o) => o.scope === 'proxy' || o.scope === 'command').map((o) => o.key);
    const levels = [
      ['c.json: ', (k) => withKey({ mappings: [base] }, k, 1), ['mappings', ...settings]],
      ['c.json: mappings[0].', (k) => ({ mappings: [withKey(base, k, 1)] }), Object.keys(mappingFields)],
      [
        'c.json: mappings[0].listen.',
        (k) => ({ mappings: [{ ...base, listen: withKey(base.listen, k, 1) }] }),
        ['host', 'port'],
      ],
      [
        'c.json: mappings[0].target.',
        (k) => ({ mappings: [{ ...base, target: withKey(base.target, k, 1) }] }),
        ['host', 'port'],
      ],
    ];
    for (const [where, make, allowed] of levels) {
      fc.assert(
        fc.property(unknownKey(allowed), (key) => {
          const cli = cliParse(JSON.stringify(make(key)));
          assert.ok(cli.error, `${where}${key} was accepted`);
          assert.ok(
            cli.error.message.startsWith(`${where}${key} is not a known`),
            `${cli.error.message} should name ${where}${key}`,
          );
        }),
        { numRuns: 200 },
      );
    }
  });

  test('any text: a UsageError, or mappings and options the API accepts', () => {
    const mappingish = fc.record(
      {
        proto: jsonEdges,
        listen: fc.oneof(fc.record({ host: jsonEdges, port: jsonEdges }, { requiredKeys: [] }), jsonEdges),
        target: fc.oneof(fc.record({ host: jsonEdges, port: jsonEdges }, { requiredKeys: [] }), jsonEdges),
        backlog: jsonEdges,
        udpTimeoutMs: jsonEdges, // (udpMaxFlows: the property above covers it, with its edges)
      },
      { requiredKeys: [] },
    );
    const texts = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.json({ maxDepth: 3 }),
      fc
        .record(
          {
            engine: jsonEdges,
            threads: jsonEdges,
            mappings: fc.array(fc.oneof(mappingish, fc.string()), { maxLength: 3 }),
          },
          { requiredKeys: ['mappings'] },
        )
        .map((o) => JSON.stringify(o)),
      fc.array(mappingish, { maxLength: 3 }).map((a) => JSON.stringify(a)),
    );
    fc.assert(
      fc.property(texts, (text) => {
        const cli = cliParse(text);
        if (cli.error) return; // a UsageError (cliParse checked that)
        const { mappings, proxy } = cli.config;
        const po = apiVerdict((o) => validateProxyOptions(o, 'splice'), proxy);
        assert.ok(po.ok, `${text}: createProxy would reject ${show(proxy)}: ${po.error?.message}`);
        for (const { options } of mappings) {
          const v = apiVerdict(validateMapping, options);
          assert.ok(v.ok, `${text}: add() would reject ${show(options)}: ${v.error?.message}`);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('CLI flag values', () => {
  test('unknown flags, Object.prototype names included, are rejected as unknown', () => {
    const KNOWN = [
      ...OPTIONS.flatMap((o) => [o.flag, ...(o.short ? [o.short] : [])]),
      // docker-proxy's: rejected too, naming the drop-in (cli-args.test.mjs)
      ...['proto', 'host-ip', 'host-port', 'container-ip', 'container-port', 'use-listen-fd'],
    ];
    const name = fc
      .oneof(
        fc.string({ minLength: 1, maxLength: 12 }),
        fc.constantFrom(...Object.getOwnPropertyNames(Object.prototype)),
      )
      .filter((n) => !KNOWN.includes(n) && !n.includes('=') && !n.startsWith('-'));
    fc.assert(
      fc.property(name, fc.boolean(), (n, eq) => {
        // With a valid mapping, so that nothing else can be wrong.
        const argv = [...(eq ? [`--${n}=x`] : [`--${n}`, 'x']), '-p', '127.0.0.1:1:1.1.1.1:2'];
        let result;
        try {
          result = parseArgs(argv);
        } catch (err) {
          assert.ok(err instanceof UsageError, `${show(argv)}: ${err?.stack}`);
          assert.equal(err.message, `unknown flag: --${n}`, show(argv));
          return;
        }
        assert.fail(`${show(argv)} was accepted: ${show(result.mappings)}`);
      }),
      {
        numRuns: 500,
        examples: [
          ['constructor', false],
          ['toString', true],
          ['hasOwnProperty', false],
        ],
      },
    );
  });

  test('--engine, --threads, --interval, --drain-timeout, --json=, --config with wrong values: a UsageError naming the flag', () => {
    const seconds = (min) => (v) => /^\d+(\.\d+)?$/.test(v) && Number(v) >= min && Number(v) <= 86400;
    const valid = {
      engine: (v) => v === 'splice' || v === 'stream',
      threads: (v) =>
        v === 'auto' ||
        (/^\d+(\.\d+)?$/.test(v) && Number.isInteger(Number(v)) && Number(v) >= 1 && Number(v) <= 64),
      interval: seconds(0.05),
      'drain-timeout': seconds(0),
      json: (v) => /^(1|t|true|0|f|false)$/i.test(v),
      config: () => false, // only '' is generated for it: a file name is needed
    };
    const junk = fc.oneof(
      fc.string({ maxLength: 10 }),
      fc.string({ unit: 'grapheme', maxLength: 6 }),
      fc.constantFrom(
        '',
        '0',
        '65',
        '-1',
        '1e3',
        '0.01',
        '.5',
        '5.',
        '1,5',
        'Infinity',
        'NaN',
        '86401',
        'SPLICE',
        'yes',
      ),
    );
    fc.assert(
      fc.property(
        fc.constantFrom(...Object.keys(valid)),
        junk,
        fc.constantFrom('-', '--'),
        fc.boolean(),
        (flag, value, dashes, eq) => {
          fc.pre(!valid[flag](value) && (flag !== 'config' || value === ''));
          const argv = ['-p', '1:1.1.1.1:1'];
          // --json only takes a value after '='; a value that looks like a flag is "no value".
          argv.push(...(eq || flag === 'json' ? [`${dashes}${flag}=${value}`] : [`${dashes}${flag}`, value]));
          assert.throws(
            () => parseArgs(argv, () => '[]'),
            (err) => {
              assert.ok(err instanceof UsageError, `${show(argv)}: ${err?.stack}`);
              assert.ok(
                err.message.includes(`${dashes}${flag}`),
                `${show(argv)}: ${err.message} should name ${dashes}${flag}`,
              );
              return true;
            },
            show(argv),
          );
        },
      ),
      { numRuns: 2000 },
    );
  });

  test('--metrics: any text is a UsageError naming --metrics, or a valid host and port', () => {
    const text = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc
        .tuple(
          fc.oneof(
            fc.ipV4(),
            fc.ipV6().map((a) => `[${a}]`),
            fc.domain(),
            fc.string({ maxLength: 6 }),
          ),
          fc.oneof(fc.integer({ min: -5, max: 70000 }).map(String), fc.string({ maxLength: 6 })),
        )
        .map(([h, p]) => `${h}:${p}`),
    );
    fc.assert(
      fc.property(text, (t) => {
        let r;
        try {
          r = parseListenAddress(t, '--metrics');
        } catch (err) {
          assert.ok(err instanceof UsageError, `${JSON.stringify(t)}: ${err?.stack}`);
          assert.ok(
            err.message.includes('--metrics'),
            `${JSON.stringify(t)}: ${err.message} should name --metrics`,
          );
          return;
        }
        assert.ok(validHost(r.host), `${JSON.stringify(t)} gave host ${JSON.stringify(r.host)}`);
        assert.ok(
          Number.isInteger(r.port) && r.port >= 0 && r.port <= 65535,
          `${JSON.stringify(t)} gave port ${r.port}`,
        );
      }),
      { numRuns: 2000 },
    );
  });

  test("docker-proxy's flags, whatever their value: a UsageError naming the flag and the drop-in", () => {
    const flags = ['proto', 'host-ip', 'host-port', 'container-ip', 'container-port', 'use-listen-fd'];
    fc.assert(
      fc.property(
        fc.constantFrom(...flags),
        fc.string({ maxLength: 12 }).filter((v) => !v.startsWith('-')),
        fc.constantFrom('-', '--'),
        fc.boolean(),
        (flag, value, dashes, eq) => {
          const argv = ['-p', '127.0.0.1:1:1.1.1.1:2'];
          argv.push(...(eq ? [`${dashes}${flag}=${value}`] : [`${dashes}${flag}`, value]));
          assert.throws(
            () => parseArgs(argv),
            (err) => {
              assert.ok(err instanceof UsageError, `${show(argv)}: ${err?.stack}`);
              assert.ok(
                err.message.startsWith(`${dashes}${flag} is docker-proxy's flag`) &&
                  err.message.includes('portsplice-docker-proxy'),
                `${show(argv)}: ${err.message}`,
              );
              return true;
            },
          );
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('the CLI process with a bad config file', () => {
  let dir;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'portsplice-bad-input-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cases = [
    ['mappings[1].target.port', (m) => ({ ...m, target: { ...m.target, port: 0 } })],
    ['mappings[1].listen.host', (m) => ({ ...m, listen: { ...m.listen, host: 'not a host!' } })],
    ['mappings[1].backlog', (m) => ({ ...m, backlog: 70000 })],
    ['mappings[1].connectTimeoutMs', (m) => ({ ...m, connectTimeoutMs: 2 ** 31 })],
    ['mappings[1].udpTimeoutMs', (m) => ({ ...m, proto: 'udp', udpTimeoutMs: -5 })],
    ['mappings[1].udpMaxFlows', (m) => ({ ...m, proto: 'udp', udpMaxFlows: 2 ** 20 + 1 })],
    ['mappings[1].lissten', (m) => withKey(m, 'lissten', {})],
    ['threads', null, { threads: 65 }],
    ['pipeSize', null, { pipeSize: 100 }],
    ['drainTimeout', null, { drainTimeout: 'soon' }],
  ];
  for (const [field, spoil, top] of cases) {
    test(`${field}: exit 2 with one line naming it, "1\\n..." on fd 3, nothing listened`, async () => {
      const [a, b] = [await freePort(), await freePort()];
      const first = { proto: 'tcp', listen: { host: V4, port: a }, target: { host: V4, port: 9 } };
      const second = { proto: 'tcp', listen: { host: V4, port: b }, target: { host: V4, port: 9 } };
      const file = path.join(dir, 'c.json');
      fs.writeFileSync(file, JSON.stringify({ ...top, mappings: [first, spoil ? spoil(second) : second] }));
      const child = spawnChild(process.execPath, [CLI_PATH, '--config', file], { statusPipe: true });
      const exit = await child.waitClosed(10000);
      assert.deepEqual(
        exit,
        { code: 2, signal: null },
        `bad input is a usage error (exit 2); ${child.describe()}`,
      );
      assert.ok(child.err.includes(`c.json: ${field}`), `stderr names ${field}: ${child.err}`);
      assert.match(
        child.err,
        /^portsplice: [^\n]+\nTry 'portsplice --help'\.\n$/,
        'one line, then where to look',
      );
      assert.equal(child.out, '', 'nothing was reported as listening');
      assert.ok(
        child.status.startsWith('1\n') && child.status.includes(field),
        `fd 3: ${JSON.stringify(child.status)}`,
      );
      assert.ok(await canBind(a), `port ${a} of the valid first mapping is free`);
      assert.ok(await canBind(b), `port ${b} is free`);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// portsplice-docker-proxy
// ---------------------------------------------------------------------------------------------

/** strconv.ParseInt(s, 0, 64): a BigInt, or null for a syntax or range error. */
function goParseInt(s0) {
  let s = s0;
  let negative = false;
  if (s[0] === '+' || s[0] === '-') {
    negative = s[0] === '-';
    s = s.slice(1);
  }
  if (s === '') return null;
  const digitsOf = s;
  let base = 10n;
  let digits = s;
  if (s[0] === '0') {
    const p = s.length >= 3 ? s[1].toLowerCase() : '';
    if (p === 'b' || p === 'o' || p === 'x') {
      base = { b: 2n, o: 8n, x: 16n }[p];
      digits = s.slice(2);
    } else {
      base = 8n;
      digits = s.slice(1);
    }
  }
  let value = 0n;
  let underscores = false;
  for (const c of digits) {
    if (c === '_') {
      underscores = true;
      continue;
    }
    const lower = c.toLowerCase();
    let d;
    if (c >= '0' && c <= '9') d = BigInt(c.charCodeAt(0) - 48);
    else if (lower >= 'a' && lower <= 'z' && lower.length === 1) d = BigInt(lower.charCodeAt(0) - 87);
    else return null;
    if (d >= base) return null;
    value = value * base + d;
  }
  if (underscores && !goUnderscoreOK(digitsOf)) return null;
  if (negative ? value > 2n ** 63n : value >= 2n ** 63n) return null;
  return negative ? -value : value;
}

/** strconv's underscoreOK (on the text without its sign). */
function goUnderscoreOK(s) {
  let saw = '^';
  let i = 0;
  let hex = false;
  if (s.length >= 2 && s[0] === '0' && 'box'.includes(s[1].toLowerCase())) {
    i = 2;
    saw = '0';
    hex = s[1].toLowerCase() === 'x';
  }
  for (; i < s.length; i++) {
    const c = s[i];
    if ((c >= '0' && c <= '9') || (hex && c.toLowerCase() >= 'a' && c.toLowerCase() <= 'f')) {
      saw = '0';
    } else if (c === '_') {
      if (saw !== '0') return false;
      saw = '_';
    } else {
      if (saw === '_') return false;
      saw = '!';
    }
  }
  return saw !== '_';
}

const GO_BOOL = new Set(['1', 't', 'T', 'TRUE', 'true', 'True', '0', 'f', 'F', 'FALSE', 'false', 'False']);
const BINARY_FLAGS = {
  'container-ip': 'string',
  'container-port': 'int',
  'host-ip': 'string',
  'host-port': 'int',
  proto: 'string',
  'use-listen-fd': 'bool',
  v: 'bool',
  version: 'bool',
};

/**
 * Go's flag.Parse over docker-proxy's flag set: 'error' (exit 2), 'help' or 'version' (exit 0),
 * or 'ok' (the values are then checked, and fail with exit 1 in these tests).
 */
function goFlagOutcome(argv) {
  let version = false;
  for (let i = 0; i < argv.length;) {
    const s = argv[i];
    if (s.length < 2 || s[0] !== '-') break;
    let minuses = 1;
    if (s[1] === '-') {
      minuses = 2;
      if (s.length === 2) break;
    }
    let name = s.slice(minuses);
    if (name.length === 0 || name[0] === '-' || name[0] === '=') return 'error';
    i++;
    let value;
    const eq = name.indexOf('=', 1);
    if (eq > 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    const kind = Object.hasOwn(BINARY_FLAGS, name) ? BINARY_FLAGS[name] : undefined;
    if (kind === undefined) return name === 'h' || name === 'help' ? 'help' : 'error';
    if (kind === 'bool') {
      if (value !== undefined && !GO_BOOL.has(value)) return 'error';
      const on = value === undefined || ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value);
      if (name === 'v' || name === 'version') version = on;
      continue;
    }
    if (value === undefined) {
      if (i >= argv.length) return 'error';
      value = argv[i++];
    }
    if (kind === 'int' && goParseInt(value) === null) return 'error';
  }
  return version ? 'version' : 'ok';
}

describe('portsplice-docker-proxy flags', () => {
  let blocker;
  let udpBlocker;
  let blockedPort;

  before(async () => {
    // A dual-stack wildcard listener on the port every generated command line asks for: should
    // a "junk" command line turn out valid, its bind fails (exit 1) instead of starting a proxy.
    blocker = net.createServer();
    await new Promise((resolve, reject) => {
      blocker.once('error', reject);
      blocker.listen({ host: '::', port: 0, ipv6Only: false }, resolve);
    });
    blockedPort = blocker.address().port;
    // And on UDP, for a junk command line that turns out to be a valid "-proto udp".
    udpBlocker = dgram.createSocket({ type: 'udp6', ipv6Only: false });
    await new Promise((resolve, reject) => {
      udpBlocker.once('error', reject);
      udpBlocker.bind(blockedPort, '::', resolve);
    });
  });

  after(async () => {
    await new Promise((resolve) => blocker?.close(resolve));
    await new Promise((resolve) => (udpBlocker ? udpBlocker.close(resolve) : resolve()));
  });

  /** Run the binary with `argv` (fd 3 a pipe): resolves `{ code, signal, status, stderr }`. */
  async function run(argv) {
    const child = spawnChild(dockerProxyPath, argv, { statusPipe: true });
    const exit = await child.waitClosed(5000);
    return { ...exit, status: child.status, stderr: child.err };
  }

  test('junk flags and values: exit 2 for flag errors, exit 1 with "1\\n<error>" on fd 3 otherwise; never a crash, never "0\\n"', async () => {
    const text = fc
      .oneof(
        fc.string({ maxLength: 10 }),
        fc.string({ unit: 'grapheme', maxLength: 6 }),
        fc.constantFrom(
          '',
          '-',
          '--',
          '=',
          '0',
          '-1',
          '+1',
          '65536',
          '0x',
          '0x_1',
          '0_1',
          '1__0',
          '0b102',
          '0o8',
          '99999999999999999999',
          '-9223372036854775809',
          '9223372036854775807',
          '1e3',
          ' 80',
          '127.0.0.1',
          '::1',
          '::ffff:1.2.3.4',
          '1.2.3.256',
          'tcp',
          'udp',
          'sctp',
          'TCP',
          'true',
          'maybe',
        ),
      )
      .filter((s) => !s.includes('\0'));
    const flagName = fc.oneof(
      {
        weight: 4,
        arbitrary: fc.constantFrom(
          'proto',
          'host-ip',
          'host-port',
          'container-ip',
          'container-port',
          'use-listen-fd',
          'v',
          'version',
        ),
      },
      { weight: 1, arbitrary: text.filter((n) => !['h', 'help'].includes(n.split('=')[0])) },
    );
    const token = fc.oneof(
      {
        weight: 6,
        arbitrary: fc
          .tuple(fc.constantFrom('-', '--'), flagName, fc.boolean(), text)
          .map(([d, n, eq, v]) => (eq ? [`${d}${n}=${v}`] : [`${d}${n}`, v])),
      },
      { weight: 1, arbitrary: fc.constantFrom(['---proto=tcp'], ['-=1'], ['--=x'], ['-proto']) },
      { weight: 1, arbitrary: text.map((t) => [t]) },
    );
    const base = () => [
      '-proto',
      'tcp',
      '-host-ip',
      '127.0.0.1',
      '-host-port',
      String(blockedPort),
      '-container-ip',
      '127.0.0.1',
      '-container-port',
      '9',
    ];
    // The host port is never anything but the blocked one: a junk value for it must be junk.
    const hostPortOk = (argv) => {
      for (let i = 0; i < argv.length; i++) {
        const m = /^--?host-port(?:=(.*))?$/.exec(argv[i]);
        if (!m) continue;
        const v = m[1] ?? argv[i + 1];
        if (v === undefined) continue;
        const n = goParseInt(v);
        if (n !== null && n >= 1n && n <= 65535n && n !== BigInt(blockedPort)) return false;
      }
      return true;
    };
    const counts = { 1: 0, 2: 0 };
    await fc.assert(
      fc.asyncProperty(fc.array(token, { minLength: 1, maxLength: 4 }), fc.nat(), async (tokens, at) => {
        const argv = base();
        argv.splice((at % 6) * 2, 0, ...tokens.flat()); // junk before, between or after the valid flags
        const expected = goFlagOutcome(argv);
        fc.pre(expected !== 'help' && expected !== 'version' && hostPortOk(argv));
        const r = await run(argv);
        const what = `${show(argv)} -> exit ${r.code}/${r.signal}, fd 3 ${JSON.stringify(r.status)}, stderr ${JSON.stringify(r.stderr.slice(0, 300))}`;
        assert.equal(r.signal, null, `no crash: ${what}`);
        assert.notEqual(r.status, '0\n', `never ready: ${what}`);
        assert.ok(r.status.startsWith('1\n') && r.status.length > 2, `an error on fd 3: ${what}`);
        if (expected === 'error') {
          assert.equal(r.code, 2, `a flag error exits 2 (as Go's flag package): ${what}`);
          assert.match(r.stderr, /\nUsage of /, `the usage follows the error: ${what}`);
          assert.equal(r.status, `1\n${r.stderr.split('\n')[0]}`, `fd 3 has the error: ${what}`);
        } else {
          assert.equal(r.code, 1, `values that parse but cannot be served exit 1: ${what}`);
        }
        counts[r.code]++;
      }),
      { numRuns: 250 },
    );
    assert.ok(counts[1] > 20 && counts[2] > 20, `both kinds of failure were exercised: ${show(counts)}`);
  });
});
