/**
 * local's per-message copy (issue 9, item 3): a message for several recipients
 * is spooled once and each mailbox written from that copy. The copy lives in
 * `spool/local/`, a directory only the mailbox account can write (0700), never
 * in the system temporary directory; it is removed after the delivery, and what
 * a crashed local left there is removed when local starts.
 *
 * The delivery is held in flight by someone else's dotlock on carol's mbox, so
 * the copy can be looked at while local still needs it. The test speaks LMTP to
 * local's own socket: nothing between it and local decides how recipients are
 * grouped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, IS_ROOT, RawSmtp, waitFor } from './harness.js';
import { lookupSystemUser } from '../../packages/common/dist/index.js';

const BOB = 'bob@example.test';
const CAROL = 'carol@example.test';

async function instance(unprivileged: boolean): Promise<Instance> {
  return Instance.create({
    unprivileged,
    users: [{ address: BOB }, { address: CAROL, mailbox: 'mbox' }],
    // long enough to look at the copy while local waits; the test removes the lock long before
    main: { mailbox_lock_timeout: '60s' },
  });
}

/** Someone else holds carol's mbox dotlock (fresh, so never judged stale); the directories made for it belong to uid/gid, as local's would. */
function lockMbox(inst: Instance, uid: number, gid: number): string {
  const lock = `${inst.mbox(CAROL)}.lock`;
  const home = path.dirname(lock);
  fs.mkdirSync(home, { recursive: true });
  for (const d of [path.dirname(home), home]) fs.chownSync(d, uid, gid);
  fs.writeFileSync(lock, '99999\n');
  return lock;
}

const copyDir = (inst: Instance) => path.join(inst.spool, 'local');

/** An LMTP transaction on local's socket up to the end of DATA; the replies are the caller's to read. */
async function sendLmtp(inst: Instance, rcpts: string[]): Promise<RawSmtp> {
  const c = await waitFor('local to accept connections', () => RawSmtp.connectUnix(path.join(inst.spool, 'private', 'local')));
  const steps = [['LHLO test.example.net', '250'], ['MAIL FROM:<alice@example.net>', '250'],
    ...rcpts.map((r) => [`RCPT TO:<${r}>`, '250']), ['DATA', '354']];
  for (const [line, code] of steps) {
    const reply = await c.command(line);
    assert.ok(reply.startsWith(code), `${line}: ${reply}`);
  }
  await c.send(`From: <alice@example.net>\r\nSubject: ${rcpts.length} recipients\r\n\r\nOne copy for both.\r\n.\r\n`);
  return c;
}

/**
 * One message to carol (mbox, locked) and bob (Maildir) over LMTP; returns the
 * copy's path and stat taken while local waits for carol's lock, and the two replies.
 */
async function deliverWhileLocked(inst: Instance, lock: string): Promise<{ copy: string; st: fs.Stats; body: Buffer; replies: string[] }> {
  const c = await sendLmtp(inst, [CAROL, BOB]);
  try {
    let copy = '';
    let st: fs.Stats;
    let body: Buffer;
    try {
      // written whole before the first mailbox, so it is complete while carol's lock holds local
      const names = await waitFor('the per-message copy in spool/local/', () => {
        const n = fs.readdirSync(copyDir(inst));
        return n.length > 0 && /One copy for both\./.test(fs.readFileSync(path.join(copyDir(inst), n[0]), 'utf8')) ? n : null;
      });
      assert.equal(names.length, 1, `one copy: ${names.join(', ')}`);
      copy = path.join(copyDir(inst), names[0]);
      st = fs.lstatSync(copy);
      body = fs.readFileSync(copy);
    } finally {
      fs.rmSync(lock, { force: true });
    }
    const replies = [await c.reply(70000), await c.reply(70000)];
    await c.command('QUIT');
    return { copy, st, body, replies };
  } finally {
    c.close();
  }
}

function assertDelivered(inst: Instance, r: { copy: string; st: fs.Stats; body: Buffer; replies: string[] }): void {
  assert.ok(r.st.isFile(), `${r.copy} is a regular file`);
  assert.equal(r.st.mode & 0o777, 0o600, 'the copy is private to the mailbox account');
  assert.match(r.body.toString(), /One copy for both\./, 'the copy holds the message');
  assert.match(r.replies[0], /^250 2\.0\.0 <carol@example\.test> delivered to mbox/);
  assert.match(r.replies[1], /^250 2\.0\.0 <bob@example\.test> delivered to maildir/);
  assert.deepEqual(fs.readdirSync(copyDir(inst)), [], 'the copy is removed after the delivery');
  assert.match(fs.readFileSync(inst.mbox(CAROL), 'utf8'), /One copy for both\./);
  assert.equal(inst.delivered(BOB).length, 1);
}

test('a message for several recipients is copied into spool/local/ (0700), not the temporary directory, and removed after', async () => {
  const inst = await instance(true);
  try {
    await inst.start();
    const lock = lockMbox(inst, process.getuid!(), process.getgid!());
    const r = await deliverWhileLocked(inst, lock);
    const dir = fs.lstatSync(copyDir(inst));
    assert.ok(dir.isDirectory(), 'spool/local is a directory');
    assert.equal(dir.mode & 0o7777, 0o700, 'spool/local is 0700');
    assertDelivered(inst, r);
  } finally {
    await inst.destroy();
  }
});

test('copies a crashed local left in spool/local/ are removed at start; a live process\'s copy is kept', async () => {
  const inst = await instance(true);
  try {
    fs.mkdirSync(copyDir(inst), { recursive: true, mode: 0o700 });
    // pid_max is at most 2^22: this pid never runs
    const dead = path.join(copyDir(inst), '4194305.1');
    const junk = path.join(copyDir(inst), 'not-a-copy');
    const live = path.join(copyDir(inst), `${process.pid}.1`);
    for (const f of [dead, junk, live]) fs.writeFileSync(f, 'left over\n', { mode: 0o600 });
    await inst.start();
    await waitFor('local to remove the left-overs', () => !fs.existsSync(dead) && !fs.existsSync(junk));
    assert.ok(fs.existsSync(live), 'a copy of a process that still runs (another local) is left alone');
  } finally {
    await inst.destroy();
  }
});

test('without spool/local/, a message for several recipients gets 451 4.3.0 for each; one recipient is still delivered', async () => {
  const inst = await instance(true);
  try {
    await inst.start();
    fs.rmSync(copyDir(inst), { recursive: true });
    let c = await sendLmtp(inst, [CAROL, BOB]);
    const replies = [await c.reply(), await c.reply()];
    c.close();
    for (const [i, rcpt] of [CAROL, BOB].entries()) {
      assert.match(replies[i], /^451 4\.3\.0 cannot copy the message for its recipients: .*ENOENT/, `${rcpt}: ${replies[i]}`);
    }
    assert.equal(inst.delivered(BOB).length, 0, 'nothing delivered');
    await inst.waitForLog('the failed copy logged', (e) => e.service === 'local' && /cannot copy/.test(e.msg) && e.dir === copyDir(inst));
    c = await sendLmtp(inst, [BOB]);
    assert.match(await c.reply(), /^250 2\.0\.0 <bob@example\.test> delivered to maildir/);
    c.close();
  } finally {
    await inst.destroy();
  }
});

test('as root: spool/local/ and the copy belong to the mailbox account (vmail)', async () => {
  assert.ok(IS_ROOT, 'this test runs services under their own accounts: run it as root (CI does)');
  const inst = await instance(false);
  try {
    await inst.start();
    const vmail = lookupSystemUser('vmail');
    assert.ok(vmail, 'vmail exists (postern init --create-users)');
    const dir = fs.lstatSync(copyDir(inst));
    assert.equal(`${dir.uid}:${dir.gid} ${(dir.mode & 0o7777).toString(8)}`, `${vmail.uid}:${vmail.gid} 700`, 'spool/local: vmail 0700');
    const lock = lockMbox(inst, vmail.uid, vmail.gid);
    const r = await deliverWhileLocked(inst, lock);
    assert.equal(`${r.st.uid}:${r.st.gid}`, `${vmail.uid}:${vmail.gid}`, 'the copy belongs to vmail');
    assertDelivered(inst, r);
  } finally {
    await inst.destroy();
  }
});
