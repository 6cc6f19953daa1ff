/**
 * Root never follows a link in the spool (issue 8, item 1). The queue owner can
 * write incoming/, active/, deferred/ (and its hash directories), hold/ and
 * corrupt/, anyone maildrop/, local (vmail) local/, smtp (postern-relay)
 * mta-sts/ and tlsrpt/: links planted there must not make
 * master's start, `postern setup` or `postern queue check` (all root) change
 * the owner or mode of what they point at. Needs root, as privilege.test does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, IS_ROOT, tempDir, waitFor } from './harness.js';

const QUEUE_ID = 'ABCDEF0123456789ABCD';

interface Target { path: string; mode: number; content?: string }

function describe(p: string): string {
  const st = fs.lstatSync(p);
  return `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`;
}

test('as root: links planted in the spool leave their targets alone through start, setup and queue check', async (t) => {
  assert.ok(IS_ROOT, 'spool-links.test.js must run as root (CI does): it checks what root-run code does with links in the spool');
  const outside = tempDir('link-targets');
  fs.chmodSync(outside, 0o700);
  const targets: Target[] = [
    { path: path.join(outside, 'shadow'), mode: 0o600, content: 'root:secret\n' },
    { path: path.join(outside, 'dir'), mode: 0o700 },
  ];
  fs.writeFileSync(targets[0].path, targets[0].content!, { mode: 0o600 });
  fs.mkdirSync(targets[1].path, { mode: 0o700 });
  for (const x of targets) fs.chmodSync(x.path, x.mode);
  const [file, dir] = targets.map((x) => x.path);

  const inst = await Instance.create({ unprivileged: false });
  t.after(async () => { await inst.destroy(); fs.rmSync(outside, { recursive: true, force: true }); });
  const masterCf = path.join(inst.etc, 'master.cf');
  fs.writeFileSync(masterCf, fs.readFileSync(masterCf, 'utf8').replace(/^(\d+)(\s)/gm, '127.0.0.1:$1$2'));
  inst.cli(['setup']); // the spool's directories, so there is somewhere to plant

  const plant = () => {
    const at = (rel: string) => path.join(inst.spool, rel);
    const link = (target: string, rel: string) => { fs.rmSync(at(rel), { force: true }); fs.symlinkSync(target, at(rel)); };
    const hard = (target: string, rel: string) => { fs.rmSync(at(rel), { force: true }); fs.linkSync(target, at(rel)); };
    // a hash directory of deferred/ replaced by links, and a file where one belongs
    link(dir, 'deferred/7');
    link(file, 'deferred/8');
    hard(file, 'deferred/9');
    fs.mkdirSync(at('deferred/A'), { recursive: true });
    // every directory a service account can write: the queue owner's, anyone's maildrop/, local's local/, smtp's mta-sts/ and tlsrpt/
    for (const q of ['incoming', 'active', 'deferred', 'deferred/A', 'hold', 'corrupt', 'maildrop', 'local', 'mta-sts', 'tlsrpt']) {
      link(file, `${q}/link-to-file`);
      link(dir, `${q}/link-to-dir`);
      hard(file, `${q}/hard-link`);
      // named as a queue file, so queue check reads it and files it away
      hard(file, `${q}/${QUEUE_ID}`);
    }
  };
  const unchanged = (when: string) => {
    for (const x of targets) {
      assert.equal(describe(x.path), `0:0 ${x.mode.toString(8).padStart(4, '0')}`, `${when}: ${x.path} keeps owner root:root and mode ${x.mode.toString(8)}`);
    }
    assert.equal(fs.readFileSync(file, 'utf8'), targets[0].content, `${when}: ${file} keeps its content`);
  };

  plant();
  await inst.start();
  unchanged('after postern start');
  const st = inst.status();
  assert.equal(st.running, true, 'the instance runs despite the links');
  const started = await waitFor('master to log the link it left alone', () =>
    inst.logs().find((e) => /left .*deferred\/7 alone: a symbolic link/.test(e.msg ?? '')));
  assert.equal(started.level, 'warn');

  plant();
  const running = inst.cli(['queue', 'check']);
  unchanged('after postern queue check (running)');
  assert.match(running.stdout, /deferred\/7 alone/, `queue check says it left deferred/7 alone:\n${running.stdout}`);

  await inst.stop();
  plant();
  const setup = inst.cli(['setup']);
  unchanged('after postern setup');
  assert.match(setup.stdout, /left .*deferred\/7 alone: a symbolic link, not a directory/, `setup reports the link:\n${setup.stdout}`);

  plant();
  const stopped = inst.cli(['queue', 'check']);
  unchanged('after postern queue check (stopped)');
  assert.match(stopped.stdout, /corrupt\/hard-link alone: it has \d+ links/, `queue check leaves the hard link in corrupt/ alone:\n${stopped.stdout}`);

  // and once more through a second start, with the links queue check left behind
  plant();
  await inst.start();
  unchanged('after a second postern start');
  await inst.stop();
});
