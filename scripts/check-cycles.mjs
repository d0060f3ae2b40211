#!/usr/bin/env node
// Fails when the relative imports of a tree form a cycle (type-only imports included: a
// type cycle still says that two modules each know the other's insides). ESLint's
// import/no-cycle would do this, but eslint-plugin-import is not a dependency; this reads
// `import … from`, `export … from` and `import(…)` specifiers by regular expression, which is
// enough for code that tsc and Prettier have shaped.
//
// Usage: node scripts/check-cycles.mjs [DIR…] (default: src dist). Exit 1 on a cycle.
import fs from 'node:fs';
import path from 'node:path';

const SOURCE = /\.(ts|mts|js|mjs)$/;
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;

/** Every source file below `dir` (declaration files left out: they repeat the .ts ones). */
function sources(dir) {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && SOURCE.test(e.name) && !e.name.endsWith('.d.ts'))
    .map((e) => path.resolve(e.parentPath ?? e.path, e.name));
}

/** The file a relative specifier names: tsc keeps `./x.js` in .ts sources for `./x.ts`. */
function resolve(from, specifier) {
  const base = path.resolve(path.dirname(from), specifier);
  const candidates = [
    base,
    base.replace(/\.js$/, '.ts'),
    base.replace(/\.mjs$/, '.mts'),
    `${base}.ts`,
    `${base}.js`,
  ];
  return candidates.find((c) => fs.existsSync(c) && fs.statSync(c).isFile());
}

/** The import cycles of the files below `dir`, each as a list of paths relative to it. */
export function findCycles(dir) {
  const graph = new Map();
  for (const file of sources(path.resolve(dir))) {
    const text = fs.readFileSync(file, 'utf8');
    const edges = new Set();
    for (const [, specifier] of text.matchAll(SPECIFIER)) {
      const target = resolve(file, specifier);
      if (target) edges.add(target);
    }
    graph.set(file, edges);
  }
  // Depth-first search; a back edge to a file on the current path closes a cycle.
  const cycles = [];
  const done = new Set();
  const stack = [];
  const onStack = new Set();
  const visit = (file) => {
    stack.push(file);
    onStack.add(file);
    for (const next of graph.get(file) ?? []) {
      if (onStack.has(next)) cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!done.has(next)) visit(next);
    }
    stack.pop();
    onStack.delete(file);
    done.add(file);
  };
  for (const file of [...graph.keys()].sort()) if (!done.has(file)) visit(file);
  return cycles.map((cycle) => cycle.map((f) => path.relative(path.resolve(dir), f)));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dirs = process.argv.length > 2 ? process.argv.slice(2) : ['src', 'dist'];
  let found = 0;
  for (const dir of dirs) {
    if (!fs.existsSync(dir)) continue;
    for (const cycle of findCycles(dir)) {
      console.error(`import cycle in ${dir}/: ${cycle.join(' -> ')}`);
      found++;
    }
  }
  process.exit(found === 0 ? 0 : 1);
}
