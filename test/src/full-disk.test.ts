/**
 * Full disk, for real (issue 8, items 11 and 12): the spool and the mail root
 * are small tmpfs mounts (root only; CI runs as root). A full spool makes smtpd
 * answer 452 4.3.1 and leaves nothing partial in incoming/; mail flows again
 * once space is freed; every message acknowledged while the spool filled up is
 * delivered. A full mail file system defers local delivery and never
 * truncates or half-writes a mailbox. And qmgr picks up a message left in
 * active/ by a failed attempt without a restart.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, IS_ROOT, run, waitFor, tempDir } from './harness.js';
import { QueueFileWriter, Spool, newQueueId } from '../../packages/common/dist/index.js';

const MAILDIR_USER = 'md@example.test';
const MBOX_USER = 'mb@example.test';

function mountTmpfs(dir: string, size: string): void {
  const r = run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir]);
  assert.equal(r.code, 0, `mount tmpfs on ${dir}: ${r.stderr}`);
}

/** Fill the file system of `dir` with one file, then give back `leave` bytes; bounded by the file system's size. */
function fill(dir: string, leave = 0): string {
  const filler = path.join(dir, 'filler');
  const fd = fs.openSync(filler, 'w');
  const block = Buffer.alloc(64 * 1024, 0x41);
  try {
    for (let i = 0; i < 1 << 16; i++) fs.writeSync(fd, block);
    assert.fail('the file system never filled up');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally { fs.closeSync(fd); }
  if (leave) fs.truncateSync(filler, Math.max(0, fs.statSync(filler).size - leave));
  return filler;
}

function message(subject: string, size: number): string {
  const line = 'All work and no play makes Jack a dull boy. 0123456789abcdef\r\n';
  return `From: <sender@remote.test>\r\nSubject: ${subject}\r\n\r\n${line.repeat(Math.ceil(size / line.length))}`;
}

/** One SMTP transaction; returns every reply so a test can say where it was refused. */
async function send(port: number, to: string, subject: string, size: number): Promise<{ mail: string; data?: string; end?: string }> {
  const c = await RawSmtp.connect(port);
  try {
    await c.command('EHLO client.remote.test');
    const mail = await c.command('MAIL FROM:<sender@remote.test>');
    if (!mail.startsWith('250')) return { mail };
    const rcpt = await c.command(`RCPT TO:<${to}>`);
    assert.match(rcpt, /^250/);
    const data = await c.command('DATA');
    assert.match(data, /^354/);
    await c.send(message(subject, size) + '.\r\n');
    const end = await c.reply(30000);
    await c.command('QUIT').catch(() => '');
    return { mail, data, end };
  } finally { c.close(); }
}

const queueId = (reply: string | undefined): string => {
  const m = /queued as ([0-9A-F]{20})/.exec(reply ?? '');
  assert.ok(m, `no queue id in ${reply}`);
  return m[1];
};

describe('full disk: a small tmpfs as the spool and another as the mail root', () => {
  let inst: Instance;
  const mounts: string[] = [];

  before(async () => {
    assert.ok(IS_ROOT, 'this test mounts tmpfs file systems: run it as root (CI does)');
    inst = await Instance.create({ users: [{ address: MAILDIR_USER }, { address: MBOX_USER, mailbox: 'mbox' }] });
    // an empty spool: master makes its directories at start
    fs.rmSync(inst.spool, { recursive: true, force: true });
    fs.mkdirSync(inst.spool);
    mountTmpfs(inst.spool, '8m');
    mounts.push(inst.spool);
    const mail = path.join(inst.dir, 'mail');
    fs.mkdirSync(mail, { recursive: true });
    mountTmpfs(mail, '2m');
    mounts.push(mail);
    await inst.start();
  });

  after(async () => {
    // stop first, unmount, then remove the instance (never rm -r through a live mount)
    if (inst) await inst.stop();
    for (const m of mounts.reverse()) run('umount', ['-l', m]);
    if (inst) await inst.destroy();
  });

  it('a full spool: 452 4.3.1 at DATA end and at MAIL, nothing partial in incoming/; mail flows again once space is freed', async () => {
    // room for the MAIL check, not for the message: cleanup hits ENOSPC while writing
    let filler = fill(inst.spool, 32 * 1024);
    try {
      const big = await send(inst.ports.smtp, MAILDIR_USER, 'does not fit', 600 * 1024);
      assert.match(big.end ?? big.mail, /^452 4\.3\.1 /, 'the message that does not fit is refused with 452 4.3.1');
      assert.deepEqual(fs.readdirSync(path.join(inst.spool, 'incoming')), [], 'nothing partial left in incoming/');
      await inst.waitForLog('cleanup logs the full disk', (e) => /ENOSPC/.test(String(e.err)));
      // no room at all: refused at MAIL FROM already
      fs.unlinkSync(filler);
      filler = fill(inst.spool);
      const none = await send(inst.ports.smtp, MAILDIR_USER, 'no room at all', 1000);
      assert.match(none.mail, /^452 4\.3\.1 Insufficient system storage/);
      assert.deepEqual(fs.readdirSync(path.join(inst.spool, 'incoming')), []);
    } finally {
      // space again (also when an assertion above failed: the other tests need the spool)
      fs.rmSync(filler, { force: true });
    }
    const ok = await send(inst.ports.smtp, MAILDIR_USER, 'after the disk was freed', 600 * 1024);
    assert.match(ok.end ?? '', /^250 /);
    await waitFor('delivered after space was freed', () => inst.delivered(MAILDIR_USER).some((f) => fs.readFileSync(f, 'latin1').includes('Subject: after the disk was freed')), 30000);
    await waitFor('queue empty', () => inst.queueEmpty(), 20000);
  });

  it('mail acknowledged while the spool fills up is all delivered once space is freed; qmgr works on through the full disk', async () => {
    // qmgr held still, so the acknowledged messages stay in incoming/ and the spool fills up for certain
    const qmgr = inst.status().services.find((s: any) => s.command === 'qmgr')?.pid;
    assert.ok(qmgr, 'qmgr runs');
    const token = `acked-${Date.now()}`;
    const acked: string[] = [];
    let refused = '';
    let filler = '';
    try {
      // room for two 20 KiB messages and part of a third: cleanup runs out of space midway (tmpfs counts 4 KiB pages)
      filler = fill(inst.spool, 64 * 1024);
      process.kill(qmgr, 'SIGSTOP');
      for (let i = 0; i < 64 && !refused; i++) {
        const subject = `${token}-${i}`;
        const r = await send(inst.ports.smtp, MAILDIR_USER, subject, 20 * 1024);
        if (r.end?.startsWith('250 ')) acked.push(subject);
        else if (/^452 4\.3\.1 /.test(r.end ?? r.mail)) refused = r.end ?? r.mail;
        else assert.fail(`neither 250 nor 452 4.3.1: ${JSON.stringify(r)}`);
      }
    } finally {
      process.kill(qmgr, 'SIGCONT');
    }
    try {
      assert.ok(refused, `the spool filled up: a 452 4.3.1 within 64 messages (${acked.length} acknowledged)`);
      assert.ok(acked.length >= 1, 'some mail was acknowledged before the spool was full');
      // qmgr takes them on while the disk is still full: its status writes may fail and leave them in active/
      await waitFor('qmgr to take the acknowledged mail out of incoming/', () => fs.readdirSync(path.join(inst.spool, 'incoming')).length === 0, 30000);
    } finally {
      fs.rmSync(filler, { force: true });
    }
    const delivered = () => inst.delivered(MAILDIR_USER).map((f) => fs.readFileSync(f, 'latin1'));
    await waitFor('every acknowledged message delivered', () => acked.every((s) => delivered().some((t) => t.includes(`Subject: ${s}\r\n`) || t.includes(`Subject: ${s}\n`))), 60000);
    await waitFor('queue empty', () => inst.queueEmpty(), 30000);
  });

  it('a full mail file system defers local delivery: the mbox is byte-identical, no partial file in the Maildir', async () => {
    const mailRoot = path.join(inst.dir, 'mail');
    // one delivery each first, so both mailboxes exist
    for (const to of [MBOX_USER, MAILDIR_USER]) assert.match((await send(inst.ports.smtp, to, `first for ${to}`, 500)).end ?? '', /^250 /);
    await waitFor('mbox has the first message', () => fs.existsSync(inst.mbox(MBOX_USER)) && fs.readFileSync(inst.mbox(MBOX_USER), 'latin1').includes(`Subject: first for ${MBOX_USER}`), 20000);
    await waitFor('Maildir has the first message', () => inst.delivered(MAILDIR_USER).some((f) => fs.readFileSync(f, 'latin1').includes(`Subject: first for ${MAILDIR_USER}`)), 20000);
    await waitFor('queue empty', () => inst.queueEmpty(), 20000);
    const mboxBefore = fs.readFileSync(inst.mbox(MBOX_USER));
    const newBefore = fs.readdirSync(path.join(inst.maildir(MAILDIR_USER), 'new')).sort();

    const filler = fill(mailRoot, 16 * 1024);
    try {
      const ids = [];
      for (const to of [MBOX_USER, MAILDIR_USER]) ids.push(queueId((await send(inst.ports.smtp, to, `too big for ${to}`, 300 * 1024)).end));
      for (const id of ids) {
        const line = await inst.waitForLog(`deferral of ${id}`, (e) => e.queue_id === id && e.status === 'deferred', 30000);
        assert.match(line.dsn, /^4\./);
      }
      assert.deepEqual(fs.readFileSync(inst.mbox(MBOX_USER)), mboxBefore, 'the mbox is exactly as before');
      assert.deepEqual(fs.readdirSync(path.join(inst.maildir(MAILDIR_USER), 'new')).sort(), newBefore, 'nothing new in new/');
      assert.deepEqual(fs.readdirSync(path.join(inst.maildir(MAILDIR_USER), 'tmp')), [], 'nothing left in tmp/');
    } finally {
      // space again: the deferred messages are delivered whole
      fs.rmSync(filler, { force: true });
    }
    inst.cli(['queue', 'flush']);
    await waitFor('mbox got the big one', () => fs.readFileSync(inst.mbox(MBOX_USER), 'latin1').includes(`Subject: too big for ${MBOX_USER}`), 30000);
    await waitFor('Maildir got the big one', () => inst.delivered(MAILDIR_USER).some((f) => fs.readFileSync(f, 'latin1').includes(`Subject: too big for ${MAILDIR_USER}`)), 30000);
    assert.deepEqual(fs.readFileSync(inst.mbox(MBOX_USER)).subarray(0, mboxBefore.length), mboxBefore, 'appended after the old content');
  });

  it('a message left in active/ by a failed attempt is picked up without a restart', async () => {
    // what an attempt that threw leaves behind: a queue file in active/ that no attempt holds
    const stage = tempDir('stage');
    fs.mkdirSync(path.join(stage, 'incoming'));
    const id = newQueueId();
    const w = await QueueFileWriter.create(new Spool(stage), { id, sender: 'sender@remote.test', arrival: Date.now(), origin: 'smtpd',
      recipients: [{ address: MAILDIR_USER }] });
    await w.write(Buffer.from(message('left in active', 200)));
    const file = await w.commit();
    fs.copyFileSync(file, path.join(inst.spool, 'active', `.${id}`));
    fs.renameSync(path.join(inst.spool, 'active', `.${id}`), path.join(inst.spool, 'active', id));
    fs.rmSync(stage, { recursive: true, force: true });
    await waitFor('the message left in active/ is delivered', () => inst.delivered(MAILDIR_USER).some((f) => fs.readFileSync(f, 'latin1').includes('Subject: left in active')), 30000);
    await waitFor('queue empty', () => inst.queueEmpty(), 20000);
  });
});
