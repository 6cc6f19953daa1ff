/**
 * The users file belongs to root (issue 8, item 5): a compromised service must
 * not be able to add an AUTH user or move a mailbox. smtpd reads it through its
 * group, local (vmail) through an ACL entry; `postern init`, `user add`/`del`,
 * `setup` and master's start keep it that way. Needs root (real accounts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Instance, IS_ROOT, ROOT, RawSmtp, run, waitFor } from './harness.js';
import { lookupSystemUser, lookupGroup } from '../../packages/common/dist/index.js';

const ALICE = 'alice@example.test';

/** What `account` may do with `file`: open it for reading, for writing, and replace it by rename in its directory. */
function accessOf(account: string, file: string): { read: string; write: string; replace: string } {
  const u = lookupSystemUser(account)!;
  const probe = 'const fs = require("fs"); const f = process.argv[1]; const r = {}; ' +
    'for (const [k, fn] of [["read", () => fs.closeSync(fs.openSync(f, "r"))], ["write", () => fs.closeSync(fs.openSync(f, "r+"))], ' +
    '["replace", () => { fs.writeFileSync(f + ".new", "x"); fs.renameSync(f + ".new", f); }]]) ' +
    '{ try { fn(); r[k] = "ok"; } catch (e) { r[k] = e.code; } } console.log(JSON.stringify(r));';
  const p = spawnSync(process.execPath, ['-e', probe, file], { uid: u.uid, gid: u.gid, cwd: '/', encoding: 'utf8' });
  assert.equal(p.status, 0, p.stderr);
  return JSON.parse(p.stdout);
}

function assertRootOwned(file: string, when: string): void {
  const st = fs.statSync(file);
  const smtpdGroup = lookupGroup('postern-smtpd');
  assert.equal(`${st.uid}:${st.gid} ${(st.mode & 0o777).toString(8)}`, `0:${smtpdGroup} 640`, `${when}: the users file is root:postern-smtpd 0640`);
  assert.deepEqual(accessOf('vmail', file), { read: 'ok', write: 'EACCES', replace: 'EACCES' },
    `${when}: vmail (local) reads the users file and can neither write nor replace it`);
  assert.deepEqual(accessOf('postern-smtpd', file), { read: 'ok', write: 'EACCES', replace: 'EACCES' },
    `${when}: postern-smtpd reads the users file and can neither write nor replace it`);
  for (const other of ['postern', 'postern-relay']) {
    assert.equal(accessOf(other, file).read, 'EACCES', `${when}: ${other} cannot read the users file`);
  }
}

test('as root: the users file is root\'s, readable by smtpd and local only, through init, user add/del, setup and start', async (t) => {
  assert.ok(IS_ROOT, 'users-file.test.js must run as root (CI does): it checks owners and what the service accounts can do');
  const inst = await Instance.create({ unprivileged: false, users: [{ address: ALICE }] });
  t.after(() => inst.destroy());
  const masterCf = path.join(inst.etc, 'master.cf');
  fs.writeFileSync(masterCf, fs.readFileSync(masterCf, 'utf8').replace(/^(\d+)(\s)/gm, '127.0.0.1:$1$2'));
  const users = path.join(inst.etc, 'users');
  assertRootOwned(users, 'after init and user add');

  inst.cli(['user', 'add', 'bob@example.test', '--password-stdin'], { input: 'secret\n' });
  inst.cli(['user', 'del', 'bob@example.test']);
  assertRootOwned(users, 'after user add and user del');

  // an old installation's layout (vmail-owned, group-writable): setup puts it right
  fs.chownSync(users, lookupSystemUser('vmail')!.uid, lookupGroup('postern-smtpd')!);
  fs.chmodSync(users, 0o660);
  const setup = inst.cli(['setup']);
  assert.match(setup.stdout, /owner, mode and ACL of .*users/, setup.stdout);
  assertRootOwned(users, 'after postern setup');
  const check = inst.tryCli(['check']);
  assert.doesNotMatch(check.stderr, /users/, `postern check has nothing to say about the users file:\n${check.stderr}`);

  // and master's start, too
  fs.chownSync(users, lookupSystemUser('vmail')!.uid, lookupGroup('postern-smtpd')!);
  const before = inst.tryCli(['check']);
  assert.match(before.stderr, /users: error: owned by vmail: only root may own the users file/, before.stderr);
  await inst.start();
  assertRootOwned(users, 'after postern start');

  // the services still read it: smtpd knows alice, local delivers to her
  const smtp = await RawSmtp.connect(inst.ports.smtp);
  try {
    assert.match(await smtp.command('EHLO client.example.org'), /^250/);
    assert.match(await smtp.command('MAIL FROM:<someone@example.org>'), /^250/);
    assert.match(await smtp.command(`RCPT TO:<${ALICE}>`), /^250/, 'smtpd finds alice in the users file');
    assert.match(await smtp.command('RCPT TO:<nobody-here@example.test>'), /^550/, 'and knows who is not there');
  } finally { smtp.close(); }
  const token = `users-file-${Date.now()}`;
  const r = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, ALICE], { input: `Subject: ${token}\n\n${token}\n` });
  assert.equal(r.code, 0, r.stderr);
  await waitFor('delivery to alice (local reads the users file)', () =>
    inst.delivered(ALICE).some((f) => fs.readFileSync(f, 'utf8').includes(token)), 30000);
});
