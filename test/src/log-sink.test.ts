/**
 * master's log sink (issue 8, item 6): the root master reads every child's
 * output, so a child must not be able to make it buffer without limit, nor
 * write lines in another service's name. A line longer than the cap is cut
 * into marked pieces as it streams; every JSON line carries the service and
 * pid master knows it came from.
 *
 * The sink runs in a process of its own here (the helper below), so its peak
 * memory is measured alone: a child writes 50 MiB without a newline into it.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, runAsync, tempDir, Instance } from './harness.js';

const SINK = path.join(ROOT, 'packages', 'master', 'dist', 'log-sink.js');

/**
 * A node process that attaches one child (running `childCode`) to a LogSink
 * writing `file`, waits for it to exit, and prints its own peak RSS before
 * and after, in KiB (getrusage's ru_maxrss).
 */
const HELPER = `
const { spawn } = require('node:child_process');
const { LogSink } = require(${JSON.stringify(SINK)});
const [file, childCode] = process.argv.slice(2);
if (global.gc) global.gc();
const before = process.resourceUsage().maxRSS;
const sink = new LogSink(file);
const child = spawn(process.execPath, ['-e', childCode], { stdio: ['ignore', 'pipe', 'pipe'] });
sink.attach(child, 'smtpd[127.0.0.1:2525]');
child.once('exit', () => {
  // let the last output drain through the sink
  setTimeout(() => {
    sink.close();
    process.stdout.write(JSON.stringify({ before, after: process.resourceUsage().maxRSS, child: child.pid }) + '\\n');
  }, 500);
});
`;

async function runSink(childCode: string): Promise<{ before: number; after: number; child: number; lines: string[] }> {
  const dir = tempDir('log-sink');
  const helper = path.join(dir, 'helper.js');
  const file = path.join(dir, 'maillog');
  fs.writeFileSync(helper, HELPER);
  const r = await runAsync(process.execPath, ['--expose-gc', helper, file, childCode], '', 120000);
  assert.equal(r.code, 0, `the sink helper failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l);
  fs.rmSync(dir, { recursive: true, force: true });
  return { ...out, lines };
}

describe('the log sink', () => {
  it('keeps its memory bounded when a child writes 50 MiB without a newline, and logs a truncated, marked line', async () => {
    // 50 chunks of 1 MiB of JSON-looking text with no newline, then one ordinary line
    const code = `
      const chunk = Buffer.alloc(1 << 20, 0x61); let n = 0;
      process.stdout.write('{"msg":"');
      const more = () => { while (n < 50) { n++; if (!process.stdout.write(chunk)) return process.stdout.once('drain', more); }
        process.stdout.write('"}\\n{"level":"info","msg":"after the long line"}\\n', () => process.exit(0)); };
      more();`;
    const r = await runSink(code);
    const grewMiB = (r.after - r.before) / 1024;
    assert.ok(grewMiB < 64, `the sink's peak memory grew by ${grewMiB.toFixed(1)} MiB for a 50 MiB line (bound: 64 MiB)`);
    for (const l of r.lines) assert.ok(Buffer.byteLength(l) < 70 * 1024, `no log line is longer than the cap (found ${Buffer.byteLength(l)} bytes)`);
    const parsed = r.lines.map((l) => JSON.parse(l));
    const cut = parsed.filter((e) => e.truncated === true);
    assert.ok(cut.length >= 1, 'the overlong line is logged, marked truncated');
    assert.equal(cut[0].service, 'smtpd[127.0.0.1:2525]');
    assert.equal(cut[0].pid, r.child);
    const after = parsed.find((e) => e.msg === 'after the long line');
    assert.ok(after, 'the next line after the long one is logged whole');
    assert.equal(after.truncated, undefined);
  });

  it('logs a line that claims to come from master under the service master knows wrote it', async () => {
    const code = `process.stdout.write(JSON.stringify({ level: 'info', service: 'master', pid: 1, msg: 'forged' }) + '\\n', () => process.exit(0));`;
    const r = await runSink(code);
    const forged = r.lines.map((l) => JSON.parse(l)).find((e) => e.msg === 'forged');
    assert.ok(forged, `the line is logged: ${r.lines.join('\n')}`);
    assert.equal(forged.service, 'smtpd[127.0.0.1:2525]');
    assert.equal(forged.pid, r.child);
    assert.equal(forged.claimed_service, 'master', 'what the child claimed is kept under claimed_service');
  });

  it('forwards a line whose tags are right as written, and re-writes one that names a service twice or by an escape', async () => {
    // master forwards a well-tagged line untouched (its fast path): a second "service" key, or one
    // spelled with \u escapes, must not slip through it to a reader that believes the first key
    const code = `const svc = 'smtpd[127.0.0.1:2525]', p = process.pid;
      process.stdout.write('{"level":"info","service":' + JSON.stringify(svc) + ',"pid":' + p + ',"msg":"plain"}\\n'
        + '{"level":"info","service":"master","service":' + JSON.stringify(svc) + ',"pid":' + p + ',"msg":"twice"}\\n'
        + '{"level":"info","\\\\u0073ervice":"master","service":' + JSON.stringify(svc) + ',"pid":' + p + ',"msg":"escaped"}\\n', () => process.exit(0));`;
    const r = await runSink(code);
    const line = (msg: string) => r.lines.find((l) => JSON.parse(l).msg === msg);
    assert.equal(line('plain'), `{"level":"info","service":"smtpd[127.0.0.1:2525]","pid":${r.child},"msg":"plain"}`, r.lines.join('\n'));
    for (const msg of ['twice', 'escaped']) {
      const l = line(msg);
      assert.ok(l, `the line "${msg}" is logged: ${r.lines.join('\n')}`);
      assert.equal(l.split('"service"').length, 2, `one service key, master's: ${l}`);
      assert.equal(JSON.parse(l).service, 'smtpd[127.0.0.1:2525]');
    }
  });
});

describe('a running instance', () => {
  let inst: Instance;
  before(async () => { inst = await Instance.create(); await inst.start(); });
  after(async () => { await inst?.destroy(); });

  it('tags every line with the service and pid master started', async () => {
    const status = inst.status();
    const pids = new Map<number, string>(status.services.map((s: any) => [s.pid, s.command === s.service ? s.command : `${s.command}[${s.service}]`]));
    const ready = await inst.waitForLog('a service line', (e) => pids.has(e.pid));
    assert.equal(ready.service, pids.get(ready.pid));
    for (const e of inst.logs()) if (pids.has(e.pid)) assert.equal(e.service, pids.get(e.pid), JSON.stringify(e));
  });
});
