/**
 * Programs start each other as processes, never by loading another package's
 * code (issue 9, item 6): `start --foreground` runs master as a child process
 * on the terminal, and every package manifest tells the truth.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { Instance, POSTERN, ROOT, waitFor } from './harness.js';

test('start --foreground runs master as its own process, logs to standard output, and stops it on SIGTERM', async (t) => {
  const inst = await Instance.create();
  t.after(() => inst.destroy());
  const cli = spawn(process.execPath, [POSTERN, '-c', inst.etc, 'start', '--foreground'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  cli.stdout.on('data', (d) => { out += d; });
  cli.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => cli.once('exit', (code) => r(code)));
  t.after(() => { if (cli.exitCode === null) cli.kill('SIGKILL'); });

  await waitFor('every service running', () => {
    const s = inst.status();
    return s.running && s.services.length && s.services.every((x: any) => x.running);
  }, 30000);
  const master = inst.masterPid();
  assert.ok(master, 'master wrote its pid file');
  assert.notEqual(master, cli.pid, 'master is not the postern command itself');
  const stat = fs.readFileSync(`/proc/${master}/stat`, 'utf8');
  const parent = parseInt(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1], 10);
  assert.equal(parent, cli.pid, 'master is a child process of "postern start --foreground"');
  await waitFor('master\'s log on standard output', () => /"daemon started/.test(out), 10000);

  cli.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([exited, new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), 60000); })]);
  clearTimeout(timer);
  assert.equal(code, 0, `postern start --foreground exits 0 after master stopped:\n${out.slice(-2000)}`);
  assert.ok(!fs.existsSync(path.join(inst.spool, 'pid', 'master.pid')), 'master removed its pid file: it stopped in order');
  let masterAlive = true;
  try { process.kill(master, 0); } catch { masterAlive = false; }
  assert.equal(masterAlive, false, 'master is gone');
});

test('every package manifest is true: main exists, @postern/common declared where imported', () => {
  const dir = path.join(ROOT, 'packages');
  for (const pkg of fs.readdirSync(dir)) {
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, pkg, 'package.json'), 'utf8'));
    assert.ok(fs.existsSync(path.join(dir, pkg, manifest.main)), `packages/${pkg}/package.json: main "${manifest.main}" exists`);
    const sources = fs.readdirSync(path.join(dir, pkg, 'src'), { recursive: true }).map(String).filter((f) => f.endsWith('.ts'));
    const imports = new Set<string>();
    for (const f of sources) {
      for (const m of fs.readFileSync(path.join(dir, pkg, 'src', f), 'utf8').matchAll(/from '(@postern\/[a-z-]+)'/g)) imports.add(m[1]);
    }
    for (const name of imports) {
      assert.ok(manifest.dependencies?.[name], `packages/${pkg}/package.json declares ${name}, which it imports`);
      assert.equal(name, '@postern/common', `packages/${pkg} imports only @postern/common of the suite (ARCHITECTURE.md), not ${name}`);
    }
  }
});
