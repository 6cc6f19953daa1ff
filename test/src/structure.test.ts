/**
 * The shape of the source tree, checked on the TypeScript sources themselves:
 * no import cycles in packages/*\/src or test/src; a program's package imports
 * only @postern/common, never a sibling program; docs/README.md links every
 * other page in docs/ exactly once. No servers are started.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './harness.js';

const PACKAGES = path.join(ROOT, 'packages');

/** Every .ts file under dir (recursively), as absolute paths. */
function tsFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return tsFiles(p);
    return e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/**
 * The module specifiers a file imports or re-exports: `import … from 'x'`,
 * `import type … from 'x'`, `export … from 'x'`, `import 'x'`, `import('x')`.
 * Type-only imports count: they tie the modules' designs together just the same.
 */
function specifiers(source: string): string[] {
  const text = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const out: string[] = [];
  const patterns = [
    /^\s*(?:import|export)\s+(?:type\s+)?[\w*{}\s,$]*?\s*from\s*['"]([^'"]+)['"]/gm,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) out.push(m[1]);
  return out;
}

/** The source file a specifier names, or null for a module outside this repository (node:, npm). */
function resolve(from: string, spec: string): string | null {
  if (spec === '@postern/common') return path.join(PACKAGES, 'common', 'src', 'index.ts');
  const pkg = /^@postern\/([\w-]+)$/.exec(spec);
  if (pkg) return path.join(PACKAGES, pkg[1], 'src', 'main.ts');
  if (!spec.startsWith('.')) return null;
  // a test reaches a package's compiled output (packages/X/dist/m.js): its source is packages/X/src/m.ts
  let p = path.resolve(path.dirname(from), spec).replace(/([/\\]packages[/\\][\w-]+[/\\])dist([/\\])/, '$1src$2');
  p = p.replace(/\.js$/, '');
  for (const c of [`${p}.ts`, path.join(p, 'index.ts')]) if (fs.existsSync(c)) return c;
  return `${p}.ts`; // named but missing: still an edge, tsc reports the missing file
}

type Graph = Map<string, string[]>;

function importGraph(files: string[]): Graph {
  const g: Graph = new Map();
  for (const f of files) {
    const deps = specifiers(fs.readFileSync(f, 'utf8')).map((s) => resolve(f, s)).filter((d): d is string => d !== null);
    g.set(f, [...new Set(deps)]);
  }
  return g;
}

/** Each cycle met by a depth-first walk (a back edge closes one), as the file names along it. */
function findCycles(g: Graph): string[][] {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (n: string) => {
    state.set(n, 'open');
    stack.push(n);
    for (const d of g.get(n) ?? []) {
      if (state.get(d) === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d]);
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of [...g.keys()].sort()) if (!state.has(n)) visit(n);
  return cycles;
}

const rel = (f: string) => path.relative(ROOT, f);
const programs = fs.readdirSync(PACKAGES).filter((p) => fs.existsSync(path.join(PACKAGES, p, 'src')));
const sourceFiles = [...programs.flatMap((p) => tsFiles(path.join(PACKAGES, p, 'src'))), ...tsFiles(path.join(ROOT, 'test', 'src'))];

test('the cycle finder finds a cycle (a -> b -> c -> a) and names it', () => {
  const g: Graph = new Map([['a', ['b']], ['b', ['c', 'd']], ['c', ['a']], ['d', []]]);
  assert.deepEqual(findCycles(g), [['a', 'b', 'c', 'a']]);
  assert.deepEqual(findCycles(new Map([['a', ['b']], ['b', []]])), []);
  assert.deepEqual(specifiers("import type { A } from './a.js';\nimport {\n  B,\n  C,\n} from '@postern/common';\nexport * from './d.js';\n// import x from './e.js'\nconst e = import('./f.js');\n"),
    ['./a.js', '@postern/common', './d.js', './f.js']);
});

test('no import cycles in packages/*/src and test/src', () => {
  const g = importGraph(sourceFiles);
  // guards the walk itself: a wrong ROOT would find no files and so no cycles
  assert.ok(g.size > 50, `only ${g.size} source files found`);
  const cycles = findCycles(g).map((c) => c.map(rel).join(' -> '));
  assert.deepEqual(cycles, [], `import cycles:\n${cycles.join('\n')}`);
});

test('a program package imports only @postern/common, never a sibling program', () => {
  const problems: string[] = [];
  for (const p of programs) {
    const own = path.join(PACKAGES, p, 'src') + path.sep;
    const common = path.join(PACKAGES, 'common', 'src') + path.sep;
    for (const f of tsFiles(own)) {
      for (const spec of specifiers(fs.readFileSync(f, 'utf8'))) {
        const target = resolve(f, spec);
        if (spec.startsWith('@postern/') && (p === 'common' || spec !== '@postern/common')) {
          problems.push(`${rel(f)} imports ${spec}`);
        } else if (target && spec.startsWith('.') && !target.startsWith(own)) {
          // common is reached by its package name, so the compiled program finds it where npm put it
          problems.push(`${rel(f)} imports ${spec} (${rel(target)}${target.startsWith(common) ? ': use @postern/common' : ''})`);
        }
      }
    }
    const deps = Object.keys(JSON.parse(fs.readFileSync(path.join(PACKAGES, p, 'package.json'), 'utf8')).dependencies ?? {});
    for (const d of deps) {
      if (d.startsWith('@postern/') && (p === 'common' || d !== '@postern/common')) problems.push(`packages/${p}/package.json depends on ${d}`);
    }
  }
  assert.deepEqual(problems, []);
});

test('docs/README.md links every other page in docs/ exactly once', () => {
  const docs = path.join(ROOT, 'docs');
  const index = fs.readFileSync(path.join(docs, 'README.md'), 'utf8');
  const counts = new Map<string, number>();
  // markdown links to a page of this directory: [text](page.md) or [text](page.md#anchor)
  for (const m of index.matchAll(/\]\((?:\.\/)?([\w.-]+\.md)(?:#[^)]*)?\)/g)) counts.set(m[1], (counts.get(m[1]) ?? 0) + 1);
  const pages = fs.readdirSync(docs).filter((f) => f.endsWith('.md') && f !== 'README.md').sort();
  const problems = [
    ...pages.filter((p) => (counts.get(p) ?? 0) !== 1).map((p) => `${p}: linked ${counts.get(p) ?? 0} times`),
    ...[...counts.keys()].filter((p) => !pages.includes(p)).map((p) => `${p}: linked but not in docs/`),
  ];
  assert.deepEqual(problems, []);
});

test('packages/common/src is grouped by area: only area folders and the package index, each area with its own index', () => {
  const src = path.join(PACKAGES, 'common', 'src');
  const problems: string[] = [];
  const areas: string[] = [];
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.isDirectory()) {
      areas.push(e.name);
      if (!fs.existsSync(path.join(src, e.name, 'index.ts'))) problems.push(`common/src/${e.name}/ has no index.ts`);
    } else if (e.name !== 'index.ts') {
      problems.push(`common/src/${e.name} is outside an area folder`);
    }
  }
  // the package index re-exports each area and nothing else
  const index = specifiers(fs.readFileSync(path.join(src, 'index.ts'), 'utf8')).sort();
  assert.deepEqual(index, areas.map((a) => `./${a}/index.js`).sort());
  assert.ok(areas.length >= 5, `only ${areas.length} areas`);
  assert.deepEqual(problems, []);
});
