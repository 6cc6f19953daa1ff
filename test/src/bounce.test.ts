/**
 * Delivery status notifications: a permanent failure, an expired message and a
 * delay warning each send the envelope sender one RFC 3464 report, from
 * MAILER-DAEMON with a null return path; a null sender never gets one; and the
 * original stays queued until cleanup holds the notification.
 *
 * Failures come from the real `local`: a Maildir whose parent is a regular
 * file fails for good (554 5.2.0, ENOTDIR); an mbox whose dotlock someone else
 * holds fails for now (451 4.2.0) until the lock goes away.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { simpleParser } from 'mailparser';
import { Instance, RawSmtp, waitFor, tempDir } from './harness.js';
import { Spool, QueueFileWriter, readQueueFile, appendStatus, MainConfig, Envelope } from '../../packages/common/dist/index.js';
import { buildDsn, dsnRecipients, readHeaderSection } from '../../packages/qmgr/dist/bounce.js';

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const CAROL = 'carol@example.test';

/** alice and bob have Maildirs, carol an mbox; mbox locks give up after a second. */
async function instance(main: Record<string, string> = {}): Promise<Instance> {
  return Instance.create({
    users: [{ address: ALICE }, { address: BOB }, { address: CAROL, mailbox: 'mbox' }],
    main: { mailbox_lock_timeout: '1s', ...main },
  });
}

/** bob's Maildir can never be made: its parent directory is a regular file. */
function breakMaildir(inst: Instance, address: string): void {
  const home = path.dirname(inst.maildir(address));
  fs.mkdirSync(path.dirname(home), { recursive: true });
  fs.writeFileSync(home, 'a file where a directory must be\n');
}

/** Someone else holds carol's mbox dotlock (fresh, so never judged stale). */
function lockMbox(inst: Instance, address: string): string {
  const lock = `${inst.mbox(address)}.lock`;
  fs.mkdirSync(path.dirname(lock), { recursive: true });
  fs.writeFileSync(lock, '99999\n');
  return lock;
}

/** One message over SMTP; resolves to its queue id. */
async function send(inst: Instance, from: string, to: string, subject: string): Promise<string> {
  const c = await waitFor('smtpd to accept connections', () => RawSmtp.connect(inst.ports.smtp));
  try {
    for (const [line, code] of [['EHLO client.example.net', '250'], [`MAIL FROM:<${from}>`, '250'], [`RCPT TO:<${to}>`, '250'], ['DATA', '354']]) {
      const reply = await c.command(line);
      assert.ok(reply.startsWith(code), `${line}: ${reply}`);
    }
    const reply = await c.command(`From: <${from || 'nobody@example.net'}>\r\nTo: <${to}>\r\nSubject: ${subject}\r\n`
      + `Message-ID: <${Date.now()}.${Math.random()}@example.net>\r\n\r\nThis is the body.\r\n.`);
    const m = /queued as ([0-9A-F]{20})/.exec(reply);
    assert.ok(m, `DATA: ${reply}`);
    await c.command('QUIT');
    return m[1];
  } finally {
    c.close();
  }
}

interface Part { headers: string; body: string; contentType: string }

/** The MIME parts of a multipart message, split at its boundary (mailparser folds report parts into .text). */
function partsOf(raw: string, boundary: string): Part[] {
  const lf = raw.replace(/\r\n/g, '\n');
  const sections = lf.split(`\n--${boundary}`);
  assert.ok(sections[sections.length - 1].startsWith('--'), 'closing boundary present');
  return sections.slice(1, -1).map((s) => {
    const body = s.replace(/^\n/, '');
    const blank = body.indexOf('\n\n');
    const headers = body.slice(0, blank);
    return { headers, body: body.slice(blank + 2), contentType: (/^Content-Type:\s*([^;\s]+)/im.exec(headers)?.[1] ?? '').toLowerCase() };
  });
}

interface Dsn { raw: string; parsed: Awaited<ReturnType<typeof simpleParser>>; parts: Part[]; status: string; original: string }

async function readDsn(file: string): Promise<Dsn> {
  const raw = fs.readFileSync(file);
  const parsed = await simpleParser(raw);
  const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
  assert.equal(ct.value, 'multipart/report');
  assert.equal(ct.params['report-type'], 'delivery-status');
  const parts = partsOf(raw.toString('utf8'), ct.params.boundary);
  assert.deepEqual(parts.map((p) => p.contentType), ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
  return { raw: raw.toString('utf8'), parsed, parts, status: parts[1].body, original: parts[2].body };
}

/** What every notification shares: who it is from and to, and that it cannot itself be bounced. */
function assertNotification(dsn: Dsn, subject: string): void {
  assert.match(dsn.raw, /^Return-Path: <>$/m, 'null return path');
  assert.equal(dsn.parsed.from?.value[0].address, 'MAILER-DAEMON@mx.example.test');
  assert.equal(dsn.parsed.from?.value[0].name, 'Mail Delivery System');
  assert.equal((dsn.parsed.to as any).value[0].address, ALICE);
  assert.equal(dsn.parsed.subject, subject);
  assert.equal(dsn.parsed.headers.get('auto-submitted'), 'auto-replied');
  assert.ok(dsn.parsed.messageId && dsn.parsed.date, 'Message-ID and Date');
  assert.equal(dsn.parsed.headers.get('mime-version'), '1.0');
  assert.match(dsn.status, /^Reporting-MTA: dns; mx\.example\.test$/m);
  assert.match(dsn.status, /^Arrival-Date: /m);
}

const queueIdOf = (dsn: Dsn) => /^X-Postern-Queue-ID: (\S+)$/m.exec(dsn.status)?.[1];

test('a permanent failure sends the sender one non-delivery report and removes the original', async () => {
  const inst = await instance();
  breakMaildir(inst, BOB);
  try {
    await inst.start();
    const id = await send(inst, ALICE, BOB, 'Lunch on Friday');
    await inst.waitForLog('the non-delivery notification', (e) => e.queue_id === id && /^sender non-delivery notification: /.test(e.msg));
    await waitFor('the report in alice\'s Maildir and an empty queue', () => inst.delivered(ALICE).length > 0 && inst.queueEmpty());
    assert.equal(inst.delivered(ALICE).length, 1, 'exactly one report');
    const dsn = await readDsn(inst.delivered(ALICE)[0]);
    assertNotification(dsn, 'Undelivered Mail Returned to Sender');
    assert.equal(queueIdOf(dsn), id);
    assert.match(dsn.status, /^Final-Recipient: rfc822; bob@example\.test$/m);
    assert.match(dsn.status, /^Action: failed$/m);
    assert.match(dsn.status, /^Status: 5\.2\.0$/m);
    assert.match(dsn.status, /^Diagnostic-Code: smtp; 554 5\.2\.0 /m);
    assert.match(dsn.parts[0].body, /could not\s+be delivered to one or more recipients/);
    assert.match(dsn.parts[0].body.replace(/\n +/g, ' '), /<bob@example\.test>: host local\[private\/local\.qmgr\] said: 554 5\.2\.0/);
    assert.match(dsn.original, /^Subject: Lunch on Friday$/m);
    assert.doesNotMatch(dsn.original, /This is the body/, 'headers only');
    const attachment = dsn.parsed.attachments.find((a) => a.contentType === 'text/rfc822-headers');
    assert.match(attachment!.content.toString(), /^Subject: Lunch on Friday$/m, 'mailparser sees the returned headers');
    assert.equal(inst.delivered(BOB).length, 0);
    const logs = inst.logs();
    assert.ok(logs.some((e) => e.queue_id === id && e.msg === 'removed'), 'the original was removed');
    const dsnId = logs.find((e) => e.queue_id === id && e.dsn_queue_id)!.dsn_queue_id;
    assert.ok(logs.some((e) => e.queue_id === dsnId && e.from === '<>' && e.msg === 'queue active'), 'the report travels with a null sender');
  } finally {
    await inst.destroy();
  }
});

test('undeliverable mail from the null sender is discarded with a log line, never bounced', async () => {
  const inst = await instance();
  breakMaildir(inst, BOB);
  try {
    await inst.start();
    const id = await send(inst, '', BOB, 'A bounce that bounces');
    const line = await inst.waitForLog('the discard', (e) => e.queue_id === id && e.status === 'bounced' && /null sender/.test(e.msg));
    assert.equal(line.from, '<>');
    assert.equal(line.to, '<bob@example.test>');
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.equal(inst.delivered(ALICE).length, 0);
    assert.ok(!inst.logs().some((e) => /non-delivery notification/.test(e.msg ?? '')), 'no notification');
  } finally {
    await inst.destroy();
  }
});

test('the original stays deferred until cleanup takes the report, then goes', async () => {
  const inst = await instance();
  const lock = lockMbox(inst, CAROL);
  // qmgr's notifications go through the queue owner's cleanup socket
  const cleanup = path.join(inst.spool, 'private', 'cleanup.local');
  try {
    await inst.start();
    const id = await send(inst, ALICE, CAROL, 'Kept until reported');
    await inst.waitForLog('a deferral', (e) => e.queue_id === id && e.status === 'deferred');
    // cleanup's socket out of reach, and the mailbox now broken for good (a directory where the mbox file goes)
    fs.renameSync(cleanup, `${cleanup}.away`);
    fs.mkdirSync(inst.mbox(CAROL));
    fs.unlinkSync(lock);
    await inst.waitForLog('the failed notification attempt', (e) => e.queue_id === id && /notification not queued/.test(e.msg));
    await waitFor('the original back in deferred/', () => inst.queued('deferred').some((f) => path.basename(f) === id));
    assert.equal(inst.delivered(ALICE).length, 0);
    fs.renameSync(`${cleanup}.away`, cleanup);
    await inst.waitForLog('the non-delivery notification', (e) => e.queue_id === id && /^sender non-delivery notification: /.test(e.msg));
    await waitFor('the report in alice\'s Maildir and an empty queue', () => inst.delivered(ALICE).length > 0 && inst.queueEmpty());
    assert.equal(inst.delivered(ALICE).length, 1, 'exactly one report');
    const dsn = await readDsn(inst.delivered(ALICE)[0]);
    assertNotification(dsn, 'Undelivered Mail Returned to Sender');
    assert.match(dsn.status, /^Final-Recipient: rfc822; carol@example\.test$/m);
    assert.match(dsn.status, /^Action: failed$/m);
    assert.match(dsn.status, /^Status: 5\.2\.0$/m);
  } finally {
    if (fs.existsSync(`${cleanup}.away`)) fs.renameSync(`${cleanup}.away`, cleanup);
    await inst.destroy();
  }
});

test('a message that outlives maximal_queue_lifetime is returned with one report', async () => {
  const inst = await instance({ maximal_queue_lifetime: '2s' });
  lockMbox(inst, CAROL);
  try {
    await inst.start();
    const id = await send(inst, ALICE, CAROL, 'Too late');
    await inst.waitForLog('the expiry', (e) => e.queue_id === id && e.status === 'expired', 30000);
    await inst.waitForLog('the non-delivery notification', (e) => e.queue_id === id && /^sender non-delivery notification: /.test(e.msg));
    await waitFor('the report in alice\'s Maildir and an empty queue', () => inst.delivered(ALICE).length > 0 && inst.queueEmpty());
    assert.equal(inst.delivered(ALICE).length, 1, 'exactly one report');
    const dsn = await readDsn(inst.delivered(ALICE)[0]);
    assertNotification(dsn, 'Undelivered Mail Returned to Sender');
    assert.match(dsn.status, /^Final-Recipient: rfc822; carol@example\.test$/m);
    assert.match(dsn.status, /^Action: failed$/m);
    assert.match(dsn.status, /^Status: (4\.4\.7|5\.\d{1,3}\.\d{1,3})$/m);
    assert.match(dsn.parts[0].body, /message expired in queue/);
    assert.match(dsn.original, /^Subject: Too late$/m);
  } finally {
    await inst.destroy();
  }
});

test('delay_warning_time sends one delay warning; the message is delivered later with no second one', async () => {
  const inst = await instance({ delay_warning_time: '1s' });
  const lock = lockMbox(inst, CAROL);
  try {
    await inst.start();
    const id = await send(inst, ALICE, CAROL, 'Slow going');
    await inst.waitForLog('the delay notification', (e) => e.queue_id === id && /^sender delay notification: /.test(e.msg), 30000);
    await waitFor('the warning in alice\'s Maildir', () => inst.delivered(ALICE).length > 0);
    // two more failed attempts after the warning: they must not warn again
    const deferralsAt = (n: number) => inst.logs().filter((e) => e.queue_id === id && e.status === 'deferred').length >= n;
    const before = inst.logs().filter((e) => e.queue_id === id && e.status === 'deferred').length;
    await waitFor('two more deferrals', () => deferralsAt(before + 2), 30000);
    fs.unlinkSync(lock);
    await inst.waitForLog('the delivery', (e) => e.queue_id === id && e.status === 'sent', 30000);
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.equal(inst.delivered(ALICE).length, 1, 'exactly one warning');
    assert.equal(inst.logs().filter((e) => /delay notification/.test(e.msg ?? '')).length, 1);
    assert.ok(!inst.logs().some((e) => /non-delivery notification/.test(e.msg ?? '')));
    const dsn = await readDsn(inst.delivered(ALICE)[0]);
    assertNotification(dsn, 'Delayed Mail (still being retried)');
    assert.equal(queueIdOf(dsn), id);
    assert.match(dsn.status, /^Final-Recipient: rfc822; carol@example\.test$/m);
    assert.match(dsn.status, /^Action: delayed$/m);
    assert.match(dsn.status, /^Status: 4\.2\.0$/m);
    assert.match(dsn.status, /^Will-Retry-Until: /m);
    assert.match(dsn.status, /^Diagnostic-Code: smtp; 451 4\.2\.0 /m);
    assert.match(dsn.parts[0].body, /THIS IS A WARNING ONLY/);
    assert.match(dsn.original, /^Subject: Slow going$/m);
    assert.match(fs.readFileSync(inst.mbox(CAROL), 'utf8'), /^Subject: Slow going$/m, 'delivered in the end');
  } finally {
    await inst.destroy();
  }
});

/** A queue file written the way cleanup writes one, in a spool of its own. */
async function queueFile(envelope: Omit<Envelope, 'id' | 'arrival'>, message: string, prepend = '') {
  const root = tempDir('bounce-unit');
  fs.mkdirSync(path.join(root, 'incoming'));
  const env: Envelope = { ...envelope, id: '006B0630222848865601', arrival: Date.UTC(2026, 10, 24, 18, 22, 48) };
  const w = await QueueFileWriter.create(new Spool(root), env);
  await w.write(Buffer.from(message));
  if (prepend) w.addPrependedHeaders(Buffer.from(prepend));
  const file = await w.commit();
  return { root, file };
}

const config = MainConfig.parse('myhostname = mx.example.test\nbounce_size_limit = 1000\n', '/dev/null/main.cf');

test('buildDsn: RET=FULL returns a small message whole, NOTIFY=NEVER leaves a recipient out, ORCPT and Remote-MTA are reported', async () => {
  const message = 'From: <alice@example.test>\r\nSubject: Whole\r\n\r\nBody line one.\r\n';
  const { root, file } = await queueFile({
    sender: ALICE, origin: 'smtpd', dsn: { ret: 'FULL', envid: 'ENV-1' },
    recipients: [{ address: 'dave@remote.test', orcpt: 'rfc822;Dave@Remote.test' }, { address: 'erin@remote.test', notify: ['NEVER'] }],
  }, message, 'DKIM-Signature: v=1; d=example.test\r\n');
  try {
    await appendStatus(file, [
      { type: 'rcpt', index: 0, status: 'bounced', dsn: '5.1.1', reason: '550 5.1.1 <dave@remote.test>: no such user', relay: 'mx.remote.test[127.0.0.2]:25', at: Date.now() },
      { type: 'rcpt', index: 1, status: 'bounced', dsn: '5.1.1', reason: '550 5.1.1 no', relay: 'mx.remote.test[127.0.0.2]:25', at: Date.now() },
    ]);
    const info = await readQueueFile(file);
    const rcpts = dsnRecipients(info, 'bounced', 'failed');
    assert.deepEqual(rcpts.map((r) => r.address), ['dave@remote.test']);
    const raw = (await buildDsn(info, rcpts, config, 'failed')).toString('utf8');
    assert.doesNotMatch(raw.replace(/\r\n/g, ''), /\n/, 'CRLF line endings only');
    const parsed = await simpleParser(raw);
    const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
    const parts = partsOf(raw, ct.params.boundary);
    assert.deepEqual(parts.map((p) => p.contentType), ['text/plain', 'message/delivery-status', 'message/rfc822']);
    assert.match(parts[1].body, /^Original-Envelope-Id: ENV-1$/m);
    assert.match(parts[1].body, /^Original-Recipient: rfc822;Dave@Remote\.test$/m);
    assert.match(parts[1].body, /^Remote-MTA: dns; mx\.remote\.test$/m);
    assert.match(parts[1].body, /^Diagnostic-Code: smtp; 550 5\.1\.1 <dave@remote\.test>: no such user$/m);
    assert.doesNotMatch(parts[1].body, /erin@/);
    assert.match(parts[0].body.replace(/\n +/g, ' '), /<dave@remote\.test> \(expanded from <Dave@Remote\.test>\): host mx\.remote\.test\[127\.0\.0\.2\]:25 said: 550 5\.1\.1/);
    assert.equal(parts[2].body, 'DKIM-Signature: v=1; d=example.test\nFrom: <alice@example.test>\nSubject: Whole\n\nBody line one.\n');
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('readHeaderSection: stops at the blank line, even across read chunks, and returns only whole lines of an endless header', async () => {
  const long = `X-Padding: ${'x'.repeat(20000)}\r\n`;
  const body = 'Body\r\n'.repeat(50000);
  const { root, file } = await queueFile({ sender: ALICE, origin: 'smtpd', recipients: [{ address: BOB }] },
    `Subject: Big\r\n${long}${long}\r\n${body}`);
  try {
    const headers = (await readHeaderSection(await readQueueFile(file))).toString();
    assert.equal(headers, `Subject: Big\r\n${long}${long}`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  const endless = await queueFile({ sender: ALICE, origin: 'smtpd', recipients: [{ address: BOB }] },
    `Subject: Endless\r\n${'X-Line: y\r\n'.repeat(5000)}`);
  try {
    const headers = (await readHeaderSection(await readQueueFile(endless.file), 1000)).toString();
    assert.ok(headers.startsWith('Subject: Endless\r\nX-Line: y\r\n'));
    assert.ok(headers.endsWith('X-Line: y\r\n') && headers.length <= 1000, 'whole lines within the limit');
  } finally {
    fs.rmSync(endless.root, { recursive: true, force: true });
  }
});
