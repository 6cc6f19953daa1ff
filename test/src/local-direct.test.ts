/**
 * Local delivery in one hop (issue 10): qmgr hands local the message itself on
 * private/local.qmgr, no lmtp client in between, as Postfix's qmgr talks to
 * virtual(8). The delivery line comes from local and names that socket; the
 * message arrives whole (one recipient streamed, several through local's
 * copy); a mailbox that cannot be written still defers (4.2.0) or bounces
 * (5.2.0) exactly as over LMTP.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, waitFor } from './harness.js';

const RELAY = 'local[private/local.qmgr]';

async function send(inst: Instance, rcpts: string[], body: string): Promise<string> {
  const c = await RawSmtp.connect(inst.ports.smtp);
  try {
    await c.command('EHLO client.remote.test');
    await c.command('MAIL FROM:<sender@remote.test>');
    for (const r of rcpts) assert.match(await c.command(`RCPT TO:<${r}>`), /^250/);
    await c.command('DATA');
    const reply = await c.command(`Subject: direct\r\n\r\n${body}.`);
    const m = /queued as ([0-9A-F]{20})/.exec(reply);
    assert.ok(m, reply);
    return m[1];
  } finally {
    c.close();
  }
}

/** A body of `lines` distinct CRLF lines (a leading dot on some, which SMTP stuffs and the mailbox must not keep). */
function bodyOf(lines: number): string {
  let s = '';
  for (let i = 0; i < lines; i++) s += `${i % 50 === 0 ? '.' : ''}line ${i} ${'x'.repeat(60)}\r\n`;
  return s;
}

describe('local delivery straight from qmgr', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({
      users: [{ address: 'bob@example.test' }, { address: 'dave@example.test' }, { address: 'carol@example.test', mailbox: 'mbox' },
        { address: 'erin@example.test' }],
      main: { mailbox_lock_timeout: '1s' },
    });
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('logs the delivery from local with relay=local[private/local.qmgr]; the message arrives whole, one recipient or several', async () => {
    const body = bodyOf(20000); // about 1.3 MB: many frames
    const one = await send(inst, ['bob@example.test'], body);
    const two = await send(inst, ['dave@example.test', 'carol@example.test'], body);
    for (const [id, to] of [[one, 'bob'], [two, 'dave'], [two, 'carol']] as const) {
      const line = await inst.waitForLog(`${to}'s delivery line`, (e) => e.queue_id === id && e.to === `<${to}@example.test>` && e.status, 30000);
      assert.equal(line.status, 'sent', JSON.stringify(line));
      assert.equal(line.relay, RELAY);
      assert.equal(line.service, 'local');
      assert.equal(line.dsn, '2.0.0');
      assert.equal(typeof line.delay, 'number');
      // one line per recipient, as Postfix's virtual(8): it names the mailbox written and the size stored
      assert.equal(typeof line.mailbox, 'string', JSON.stringify(line));
      assert.ok((line.mailbox as string).includes(to), JSON.stringify(line));
      assert.ok((line.size as number) > body.replace(/\r\n/g, '\n').length, JSON.stringify(line)); // stored with LF endings, headers in front
      assert.deepEqual(inst.logs().filter((e) => e.queue_id === id && e.to === `<${to}@example.test>` && e.service === 'local')
        .map((e) => e.msg), [line.msg], `local logged ${to}'s delivery once`);
    }
    // nothing of these messages went through the lmtp client
    assert.deepEqual(inst.logs().filter((e) => (e.queue_id === one || e.queue_id === two) && e.service === 'lmtp'), []);
    const expected = body.replace(/\r\n/g, '\n');
    for (const to of ['bob', 'dave']) {
      const files = inst.delivered(`${to}@example.test`);
      assert.equal(files.length, 1);
      const text = fs.readFileSync(files[0], 'utf8');
      assert.match(text, new RegExp(`^Return-Path: <sender@remote\\.test>\\nDelivered-To: ${to}@example\\.test\\n`));
      assert.ok(text.endsWith(`\n\n${expected}`), `${to}: the body arrived whole`);
    }
    const mbox = fs.readFileSync(inst.mbox('carol@example.test'), 'utf8');
    assert.ok(mbox.includes(`Delivered-To: carol@example.test\n`));
    assert.ok(mbox.includes(`line 19999 ${'x'.repeat(60)}\n`), 'the mbox copy ends with the last line');
    await waitFor('the queue to be empty', () => inst.queueEmpty(), 15000);
  });

  it('a locked mbox defers (4.2.0) and is delivered once the lock goes, as over LMTP', async () => {
    const mbox = inst.mbox('carol@example.test');
    const lock = `${mbox}.lock`;
    fs.mkdirSync(path.dirname(mbox), { recursive: true });
    fs.writeFileSync(lock, `${process.pid}\n`);
    let id: string;
    try {
      id = await send(inst, ['carol@example.test'], 'locked out\r\n');
      const line = await inst.waitForLog('the deferral', (e) => e.queue_id === id && e.status === 'deferred', 30000);
      assert.equal(line.relay, RELAY);
      assert.equal(line.dsn, '4.2.0');
      assert.match(line.msg, /^deferred \(451 4\.2\.0 <carol@example\.test>: cannot write mailbox: /);
      await waitFor('the message in deferred/', () => inst.queued('deferred').length === 1, 15000);
    } finally {
      fs.rmSync(lock, { force: true });
    }
    await inst.waitForLog('the retry delivered', (e) => e.queue_id === id && e.status === 'sent', 30000);
    assert.ok(fs.readFileSync(mbox, 'utf8').includes('locked out\n'));
    await waitFor('the queue to be empty', () => inst.queueEmpty(), 15000);
  });

  it('a Maildir that can never be made (a file where its parent directory must be) bounces with 5.2.0, as over LMTP', async () => {
    // the user's home a file: the Maildir under it can never be made (ENOTDIR)
    const home = path.dirname(inst.maildir('erin@example.test'));
    fs.mkdirSync(path.dirname(home), { recursive: true });
    fs.rmSync(home, { recursive: true, force: true });
    fs.writeFileSync(home, 'not a directory\n');
    const id = await send(inst, ['erin@example.test', 'bob@example.test'], 'half of it bounces\r\n');
    const bounced = await inst.waitForLog('the bounce', (e) => e.queue_id === id && e.status === 'bounced', 30000)
      .catch((e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(inst.logs().filter((l) => l.queue_id === id))}`); });
    assert.equal(bounced.to, '<erin@example.test>');
    assert.equal(bounced.relay, RELAY);
    assert.equal(bounced.dsn, '5.2.0');
    const sent = await inst.waitForLog('bob delivered', (e) => e.queue_id === id && e.status === 'sent', 30000);
    assert.equal(sent.to, '<bob@example.test>');
    assert.equal(inst.delivered('bob@example.test').length, 2);
  });
});
