#!/usr/bin/env node
// `npm run test:quick`: the test files for the edit-test loop, every test/*.test.mjs but those
// that tag themselves slow (over about 10 s) or timing-sensitive with a line of their own:
//
//   // @test-tag slow: <why>        or        // @test-tag timing: <why>
//
// so a new file is quick until it says otherwise. `--list` prints the files instead.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TEST_DIR = fileURLToPath(new URL('../test/', import.meta.url));
const TAG = /^\/\/ @test-tag (slow|timing)\b/m;

/** The quick test files of `dir`, sorted, as paths relative to the package root. */
export function quickFiles(dir = TEST_DIR) {
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith('.test.mjs'))
    .sort()
    .filter((name) => !TAG.test(fs.readFileSync(path.join(dir, name), 'utf8')))
    .map((name) => path.join(path.relative(process.cwd(), dir), name));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const files = quickFiles();
  if (process.argv.includes('--list')) {
    console.log(files.join('\n'));
  } else {
    const run = spawnSync(
      process.execPath,
      ['--test', '--test-concurrency=1', '--test-timeout=120000', ...files],
      {
        stdio: 'inherit',
      },
    );
    process.exitCode = run.status ?? 1;
  }
}
