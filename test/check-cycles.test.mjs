// scripts/check-cycles.mjs, the lint step against import cycles: it must name a cycle in a
// tree that has one (type-only and dynamic imports too) and pass a tree that has none.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findCycles } from '../scripts/check-cycles.mjs';

const SCRIPT = new URL('../scripts/check-cycles.mjs', import.meta.url).pathname;

function tree(t, files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ps-cycles-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

test('a type-only cycle through a subfolder is found, and the script exits 1 naming it', (t) => {
  const dir = tree(t, {
    'engine.ts': "import { Tcp } from './sub/tcp.js';\nexport const x = Tcp;\n",
    'sub/tcp.ts': "import type { Mapping } from '../engine.js';\nexport class Tcp {}\n",
    'leaf.ts': "import { x } from './engine.js';\n",
  });
  assert.deepEqual(findCycles(dir), [['engine.ts', path.join('sub', 'tcp.ts'), 'engine.ts']]);
  const run = spawnSync(process.execPath, [SCRIPT, dir], { encoding: 'utf8' });
  assert.equal(run.status, 1);
  assert.match(run.stderr, /import cycle in .*: engine\.ts -> sub\/tcp\.ts -> engine\.ts/);
});

test('compiled JavaScript: a dynamic import and an export-from close a cycle too', (t) => {
  const dir = tree(t, {
    'a.js': "export { b } from './b.js';\n",
    'b.js': "export const b = 1;\nexport async function later() {\n  return import('./a.js');\n}\n",
  });
  assert.deepEqual(findCycles(dir), [['a.js', 'b.js', 'a.js']]);
});

test('a tree without cycles passes (shared module, diamond, bare imports)', (t) => {
  const dir = tree(t, {
    'a.ts': "import './b.js';\nimport { c } from './c.js';\nimport fs from 'node:fs';\n",
    'b.ts': "import type { C } from './c.js';\n",
    'c.ts': 'export const c = 1;\nexport type C = number;\n',
  });
  assert.deepEqual(findCycles(dir), []);
  execFileSync(process.execPath, [SCRIPT, dir]);
});
