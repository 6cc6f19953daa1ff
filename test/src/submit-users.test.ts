/**
 * authorized_submit_users and the service accounts (issue 8, item 4): pickup
 * decides by the maildrop file owner's uid, so a file written straight into
 * maildrop/ (bypassing sendmail) by a refused account is logged with its uid
 * and removed, never queued; sendmail refuses early with a clear message and
 * exit status 77 (EX_NOPERM), as Postfix's does. Needs root (real accounts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, IS_ROOT, ROOT, requireTool, run, waitFor } from './harness.js';
import { lookupSystemUser } from '../../packages/common/dist/index.js';

const ALICE = 'alice@example.test';
const SENDMAIL = path.join(ROOT, 'bin', 'sendmail');

/** As `user`, leave a maildrop file the way sendmail does (temporary name, rename), without sendmail's own checks. */
function dropAs(inst: Instance, user: string, token: string): string {
  const name = `${Date.now().toString(16).toUpperCase().padStart(12, '0')}${'0'.repeat(8)}`.slice(0, 20);
  const script = 'const fs = require("fs"); const [dir, name, rcpt, token] = process.argv.slice(1); ' +
    'const body = JSON.stringify({ maildrop: 1, sender: null, recipients: [rcpt] }) + "\\n" + ' +
    '`Subject: ${token}\\r\\n\\r\\n${token}\\r\\n`; ' +
    'fs.writeFileSync(`${dir}/.${name}`, body, { mode: 0o644 }); fs.renameSync(`${dir}/.${name}`, `${dir}/${name}`);';
  const r = run(requireTool('setpriv'), [`--reuid=${user}`, `--regid=${lookupSystemUser(user)!.gid}`, '--clear-groups',
    process.execPath, '-e', script, path.join(inst.spool, 'maildrop'), name, ALICE, token], { cwd: '/' });
  assert.equal(r.code, 0, `writing a maildrop file as ${user}: ${r.stderr}`);
  return name;
}

function sendmailAs(inst: Instance, user: string | null, token: string) {
  const args = [SENDMAIL, '-C', inst.etc, ALICE];
  const input = `Subject: ${token}\n\n${token}\n`;
  if (!user) return run(process.execPath, args, { input, cwd: '/' });
  return run(requireTool('setpriv'), [`--reuid=${user}`, `--regid=${lookupSystemUser(user)!.gid}`, '--clear-groups', process.execPath, ...args],
    { input, cwd: '/' });
}

function deliveredText(inst: Instance): string {
  return inst.delivered(ALICE).map((f) => fs.readFileSync(f, 'utf8')).join('\n');
}

test('as root: maildrop files of service accounts and of users outside authorized_submit_users are refused by pickup', async (t) => {
  assert.ok(IS_ROOT, 'submit-users.test.js must run as root (CI does): it writes maildrop files as real accounts');
  const inst = await Instance.create({ unprivileged: false, users: [{ address: ALICE }] });
  t.after(() => inst.destroy());
  const masterCf = path.join(inst.etc, 'master.cf');
  fs.writeFileSync(masterCf, fs.readFileSync(masterCf, 'utf8').replace(/^(\d+)(\s)/gm, '127.0.0.1:$1$2'));
  await inst.start();
  const nobody = lookupSystemUser('nobody')!;

  // default static:anyone: ordinary users may, Postern's own accounts never
  for (const account of ['postern-relay', 'postern-smtpd', 'vmail', 'postern']) {
    const token = `from-${account}-${Date.now()}`;
    const file = dropAs(inst, account, token);
    const uid = lookupSystemUser(account)!.uid;
    const entry = await inst.waitForLog(`pickup refusing ${account}'s maildrop file`,
      (e) => e.maildrop_file === file && /refused/.test(e.msg ?? ''));
    assert.equal(entry.uid, uid, `the refusal names ${account}'s uid`);
    assert.match(entry.problem, new RegExp(`User ${account}\\(${uid}\\) is not allowed to submit mail`));
    assert.ok(!fs.existsSync(path.join(inst.spool, 'maildrop', file)), `${account}'s file is removed`);
    assert.ok(!inst.logs().some((e) => e.maildrop_file === file && e.msg === 'picked up'), `${account}'s file is never queued`);

    const r = sendmailAs(inst, account, token);
    assert.equal(r.code, 77, `sendmail as ${account} exits 77 (EX_NOPERM): ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^sendmail: fatal: User ${account}\\(${uid}\\) is not allowed to submit mail`, 'm'));
  }
  const allowed = `from-nobody-${Date.now()}`;
  const ok = sendmailAs(inst, 'nobody', allowed);
  assert.equal(ok.code, 0, `nobody may submit under static:anyone: ${ok.stderr}`);
  await waitFor('nobody\'s message delivered', () => deliveredText(inst).includes(allowed), 30000);
  assert.ok(!/from-(postern|vmail)/.test(deliveredText(inst)), 'no refused message was delivered');

  // a list of login names: root yes, nobody no
  inst.cli(['config', 'set', 'authorized_submit_users=root']);
  inst.cli(['reload']);
  await inst.waitForLog('pickup reloading', (e) => e.service === 'pickup' && e.msg === 'configuration reloaded');
  const refused = sendmailAs(inst, 'nobody', 'never');
  assert.equal(refused.code, 77, `sendmail as nobody exits 77: ${refused.stderr}`);
  assert.match(refused.stderr, new RegExp(`^sendmail: fatal: User nobody\\(${nobody.uid}\\) is not allowed to submit mail`, 'm'));
  const token = `direct-nobody-${Date.now()}`;
  const file = dropAs(inst, 'nobody', token);
  const entry = await inst.waitForLog('pickup refusing nobody\'s maildrop file', (e) => e.maildrop_file === file && /refused/.test(e.msg ?? ''));
  assert.equal(entry.uid, nobody.uid);
  const rootToken = `from-root-${Date.now()}`;
  const rootRun = sendmailAs(inst, null, rootToken);
  assert.equal(rootRun.code, 0, `root is listed: ${rootRun.stderr}`);
  await waitFor('root\'s message delivered', () => deliveredText(inst).includes(rootToken), 30000);
  assert.ok(!deliveredText(inst).includes(token), 'nobody\'s maildrop file was not delivered');

  // a table this version cannot read lets nobody in: check says so
  inst.cli(['config', 'set', 'authorized_submit_users=hash:/etc/postern/submitters']);
  const check = inst.tryCli(['check']);
  assert.equal(check.code, 1, check.stderr);
  assert.match(check.stderr, /main\.cf:\d+: error: authorized_submit_users: "hash:\/etc\/postern\/submitters" is not supported/, check.stderr);
});
