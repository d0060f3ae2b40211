// scripts/test-quick.mjs: `npm run test:quick` takes every test file but those with a line
// `// @test-tag slow: ...` or `// @test-tag timing: ...`, so that new files fall in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { quickFiles } from '../scripts/test-quick.mjs';

test('tagged files are left out, untagged ones and helpers are taken or ignored as they should', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ps-quick-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = {
    'a.test.mjs': '// A new file, no tag.\n',
    'b.test.mjs': '// @test-tag slow: about 90 s\n// B.\n',
    'c.test.mjs': "// C.\nimport x from 'y';\n// @test-tag timing: expiry windows\n",
    'd.test.mjs': "// mentions @test-tag slow only inside a line: 'x // @test-tag slow'\n",
    'helpers.mjs': '// not a test file\n',
  };
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  assert.deepEqual(
    quickFiles(dir).map((f) => path.basename(f)),
    ['a.test.mjs', 'd.test.mjs'],
  );
});

test('the repository: the slow files are tagged, and the quick list is not empty', () => {
  const quick = quickFiles().map((f) => path.basename(f));
  assert.ok(quick.includes('counters.test.mjs'));
  for (const slow of ['limits.test.mjs', 'dockerd.test.mjs', 'forwarding.test.mjs'])
    assert.ok(!quick.includes(slow), slow);
});
