/**
 * The core mail path end to end, on sandbox instances started as real
 * processes with `postern start`: a real client (swaks, nodemailer) hands a
 * message to the MX listener, it lands once in the user's mailbox, and a real
 * Dovecot reads it back over IMAP with the same bytes. Then what must not get
 * in (relay, unknown users, oversized and bare-LF messages), configuration
 * errors that must stop `start`, and a corrupt queue file that must not stop
 * the mail.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import nodemailer from 'nodemailer';
import { Instance, RawSmtp, IS_ROOT, run, requireTool, tempDir, waitFor, RunResult } from './harness.js';
import { Dovecot } from './dovecot.js';
import { ImapClient } from './imap.js';

const SENDER = 'sender@remote.test';
const HELO = 'client.remote.test';
const PASSWORD = 'correct horse battery staple';

// ---------------------------------------------------------------------------
// Messages and clients

/**
 * A test message as the client hands it over, in wire (CRLF) form. It has a
 * line starting with a dot (SMTP transparency) and 8-bit UTF-8 text, both of
 * which must come back unchanged.
 */
function testMessage(to: string, subject: string): Buffer {
  return Buffer.from([
    `From: Sender <${SENDER}>`,
    `To: <${to}>`,
    `Subject: ${subject}`,
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${randomUUID()}@remote.test>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'Hello, this is the core mail path test.',
    '.a line that starts with a dot',
    'Grüße aus der Testumgebung',
    '',
    'last line',
    '',
  ].join('\r\n'));
}

const toLf = (b: Buffer): Buffer => Buffer.from(b.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');

/**
 * swaks with the message as its DATA. swaks turns the file's LF line ends into
 * CRLF, dot-stuffs and ends with CRLF "." itself; the file has no final newline
 * because swaks would add an empty line for it.
 */
function swaks(inst: Instance, to: string, message: Buffer): RunResult {
  const dir = tempDir('swaks');
  try {
    const file = path.join(dir, 'message');
    fs.writeFileSync(file, toLf(message).subarray(0, -1));
    return run(requireTool('swaks'), ['--server', '127.0.0.1', '--port', String(inst.ports.smtp), '--helo', HELO,
      '--from', SENDER, '--to', to, '--data', `@${file}`, '--timeout', '20'], { timeout: 60000 });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function queueIdOf(reply: string): string {
  const m = /250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/.exec(reply);
  assert.ok(m, `no "queued as" in: ${reply}`);
  return m[1];
}

/** The reply code and enhanced status code at the start of an SMTP reply. */
function codes(reply: string): string {
  return /^(\d{3}[ -]\d\.\d{1,3}\.\d{1,3})/.exec(reply)?.[1].replace('-', ' ') ?? reply;
}

// ---------------------------------------------------------------------------
// What arrived

/** Waits until exactly this queue id was delivered and the queue is empty; returns the Maildir file. */
async function deliveredOnce(inst: Instance, rcpt: string, queueId: string): Promise<string> {
  await waitFor(`delivery of ${queueId} to ${rcpt}`, () =>
    inst.logs().some((e) => e.queue_id === queueId && e.msg === 'removed') && inst.queueEmpty());
  const sent = inst.logs().filter((e) => e.queue_id === queueId && e.status === 'sent');
  assert.equal(sent.length, 1, `one "sent" event for ${queueId}: ${JSON.stringify(sent)}`);
  const files = inst.delivered(rcpt).filter((f) => fs.readFileSync(f, 'latin1').includes(` id ${queueId}\n`));
  assert.equal(files.length, 1, `${queueId} once in ${rcpt}'s Maildir new/`);
  return files[0];
}

/**
 * The mailbox copy is the message as sent, below exactly our three headers:
 * Return-Path: and Delivered-To: (local), then Received: (cleanup) naming the
 * queue id. `eol` is the line end of the copy (LF on disk, CRLF over IMAP).
 */
function assertSameMessage(copy: Buffer, sent: Buffer, rcpt: string, queueId: string, eol: '\n' | '\r\n'): string {
  const expected = eol === '\n' ? toLf(sent) : sent;
  assert.ok(copy.length > expected.length, 'the copy is longer than what was sent');
  assert.ok(copy.subarray(copy.length - expected.length).equals(expected),
    `the message after our headers is byte-exact:\n${copy.toString('utf8')}`);
  const added = copy.subarray(0, copy.length - expected.length).toString('utf8').split(eol);
  assert.equal(added.pop(), '', 'our headers end with a line end');
  assert.equal(added[0], `Return-Path: <${SENDER}>`);
  assert.equal(added[1], `Delivered-To: ${rcpt}`);
  assert.match(added[2], new RegExp(`^Received: from ${HELO.replace(/\./g, '\\.')} \\(unknown \\[127\\.0\\.0\\.1\\]\\)$`));
  assert.ok(added.slice(3).every((l) => l.startsWith('\t')), `only Received: continuation lines follow: ${added.join('|')}`);
  const received = added.slice(2).join(' ');
  assert.match(received, new RegExp(`\\bid ${queueId}\\b`));
  assert.match(received, new RegExp(`for <${rcpt}>;`));
  return received;
}

/** The `,S=` in a Maildir file name is the stored file's exact size. */
function assertMaildirSize(file: string): void {
  const m = /,S=(\d+)/.exec(path.basename(file));
  assert.ok(m, `${path.basename(file)} has ,S=`);
  assert.equal(parseInt(m[1], 10), fs.statSync(file).size);
}

const cleanupQueued = (inst: Instance) => inst.logs().filter((e) => e.service === 'cleanup' && e.msg === 'queued').length;

/**
 * Dovecot refuses passwd-file users with uid 0, and a sandbox started as root
 * writes the invoking uid (0) into the users file. Give the mailbox to nobody
 * instead: local (root in the sandbox) then creates the mailbox owned by it,
 * as it would for any uid in the table.
 */
function giveMailboxToNobody(inst: Instance, address: string): void {
  if (!IS_ROOT) return; // the invoking user's own uid: Dovecot runs as that user too
  const nobody = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('nobody:'));
  assert.ok(nobody, '/etc/passwd has nobody');
  const [, , uid, gid] = nobody.split(':');
  const file = path.join(inst.etc, 'users');
  const lines = fs.readFileSync(file, 'utf8').split('\n').map((l) => {
    if (!l.startsWith(`${address}:`)) return l;
    const f = l.split(':');
    f[2] = uid;
    f[3] = gid;
    return f.join(':');
  });
  fs.writeFileSync(file, lines.join('\n'));
}

// ---------------------------------------------------------------------------

describe('a message from a real client lands once in the Maildir', () => {
  const rcpt = 'alice@example.test';
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: rcpt, password: PASSWORD }] });
    await inst.start();
  });
  after(async () => { await inst?.destroy(); });

  it('swaks, plain SMTP', async () => {
    const message = testMessage(rcpt, 'via swaks');
    const r = swaks(inst, rcpt, message);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = queueIdOf(r.stdout);
    const file = await deliveredOnce(inst, rcpt, id);
    const received = assertSameMessage(fs.readFileSync(file), message, rcpt, id, '\n');
    assert.doesNotMatch(received, /\(using /, 'no TLS in the Received: header of a plaintext session');
    assertMaildirSize(file);
    for (const sub of ['tmp', 'cur']) assert.deepEqual(fs.readdirSync(path.join(inst.maildir(rcpt), sub)), [], `${sub}/ is empty`);
  });

  it('nodemailer, plaintext (ignoreTLS)', async () => {
    const message = testMessage(rcpt, 'via nodemailer, plaintext');
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.smtp, secure: false, ignoreTLS: true, name: HELO });
    try {
      const info = await transport.sendMail({ envelope: { from: SENDER, to: [rcpt] }, raw: message });
      assert.deepEqual(info.accepted, [rcpt]);
      const id = queueIdOf(info.response);
      const file = await deliveredOnce(inst, rcpt, id);
      assertSameMessage(fs.readFileSync(file), message, rcpt, id, '\n');
      assertMaildirSize(file);
    } finally {
      transport.close();
    }
  });

  it('nodemailer with opportunistic STARTTLS (self-signed certificate)', async () => {
    const message = testMessage(rcpt, 'via nodemailer, STARTTLS');
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.smtp, secure: false, name: HELO,
      tls: { rejectUnauthorized: false } });
    try {
      const info = await transport.sendMail({ envelope: { from: SENDER, to: [rcpt] }, raw: message });
      const id = queueIdOf(info.response);
      const file = await deliveredOnce(inst, rcpt, id);
      const received = assertSameMessage(fs.readFileSync(file), message, rcpt, id, '\n');
      assert.match(received, /\(using TLSv1\.[23] with cipher \S+\)/, 'the Received: header records the TLS session');
      assert.match(received, /with ESMTPS id /);
    } finally {
      transport.close();
    }
  });
});

describe('Dovecot reads what was delivered, over IMAP', () => {
  const maildirUser = 'carol@example.test';
  const mboxUser = 'dave@example.test';
  let inst: Instance;
  let dovecot: Dovecot;
  before(async () => {
    inst = await Instance.create({ users: [
      { address: maildirUser, password: PASSWORD },
      { address: mboxUser, password: PASSWORD, mailbox: 'mbox' },
    ] });
    giveMailboxToNobody(inst, maildirUser);
    giveMailboxToNobody(inst, mboxUser);
    await inst.start();
    dovecot = await Dovecot.start({ usersFile: path.join(inst.etc, 'users') });
  });
  after(async () => {
    await dovecot?.stop();
    await inst?.destroy();
  });

  /** LOGIN, SELECT INBOX (one message), FETCH 1 (RFC822.SIZE BODY.PEEK[]). */
  async function fetchOnlyMessage(user: string): Promise<{ size: number; body: Buffer }> {
    const imap = await ImapClient.connect(dovecot.port);
    try {
      await imap.login(user, PASSWORD);
      assert.equal(await imap.select('INBOX'), 1, `one message in ${user}'s INBOX (dovecot log:\n${dovecot.log()})`);
      return await imap.fetchMessage(1);
    } finally {
      await imap.logout();
    }
  }

  it('a Maildir message: same bytes plus our headers, RFC822.SIZE = the bytes sent', async () => {
    const message = testMessage(maildirUser, 'for IMAP, Maildir');
    const r = swaks(inst, maildirUser, message);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = queueIdOf(r.stdout);
    const file = await deliveredOnce(inst, maildirUser, id);
    if (IS_ROOT) assert.notEqual(fs.statSync(file).uid, 0, 'the mailbox file belongs to the user in the users table');
    const { size, body } = await fetchOnlyMessage(maildirUser);
    assertSameMessage(body, message, maildirUser, id, '\r\n');
    assert.equal(size, body.length, 'RFC822.SIZE is the length of the message Dovecot sends');
  });

  it('an mbox message: Dovecot and Python\'s mailbox module read it back', async () => {
    const message = testMessage(mboxUser, 'for IMAP, mbox');
    const r = swaks(inst, mboxUser, message);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = queueIdOf(r.stdout);
    await waitFor(`delivery of ${id}`, () => inst.logs().some((e) => e.queue_id === id && e.msg === 'removed') && inst.queueEmpty());
    assert.equal(inst.logs().filter((e) => e.queue_id === id && e.status === 'sent').length, 1);
    assert.ok(!fs.existsSync(inst.maildir(mboxUser)), 'no Maildir for an mbox user');

    const py = run(requireTool('python3'), ['-c', [
      'import json, mailbox, sys, base64',
      'box = mailbox.mbox(sys.argv[1], create=False)',
      'print(json.dumps([{"from": m.get_from(), "raw": base64.b64encode(box.get_bytes(k)).decode()} for k, m in box.items()]))',
    ].join('\n'), inst.mbox(mboxUser)]);
    assert.equal(py.code, 0, py.stderr);
    const messages = JSON.parse(py.stdout) as { from: string; raw: string }[];
    assert.equal(messages.length, 1, 'one message in the mbox');
    assert.match(messages[0].from, new RegExp(`^${SENDER} \\w{3} \\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d \\d{4}$`), 'From_ line: sender and asctime date');
    assertSameMessage(Buffer.from(messages[0].raw, 'base64'), message, mboxUser, id, '\n');

    const { size, body } = await fetchOnlyMessage(mboxUser);
    assertSameMessage(body, message, mboxUser, id, '\r\n');
    assert.equal(size, body.length, 'RFC822.SIZE is the length of the message Dovecot sends');
  });
});

describe('what must not get in gets a clear answer, and nothing is queued or delivered', () => {
  const rcpt = 'erin@example.test';
  let outside: Instance; // loopback is not in mynetworks: the client is a stranger
  let inside: Instance; // default mynetworks: loopback is trusted
  before(async () => {
    outside = await Instance.create({ users: [{ address: rcpt }], main: { mynetworks: '10.255.255.0/24', message_size_limit: '20000',
      // no DNS server here: leave out the reverse-DNS check (restrictions.test covers it)
      smtpd_client_restrictions: 'permit_mynetworks, permit_sasl_authenticated' } });
    inside = await Instance.create({ users: [{ address: rcpt }] });
    await outside.start();
    await inside.start();
  });
  after(async () => {
    await outside?.destroy();
    await inside?.destroy();
  });

  async function session(inst: Instance): Promise<RawSmtp> {
    const c = await RawSmtp.connect(inst.ports.smtp);
    assert.match(await c.command(`EHLO ${HELO}`), /^250[ -]/);
    return c;
  }

  /**
   * Proof that a refused transaction left nothing behind: a marker message
   * sent right after it, in the same session, is the only new mail the
   * instance queued and delivered, and the spool holds nothing else.
   */
  async function assertOnlyMarkerFollows(inst: Instance, c: RawSmtp): Promise<void> {
    const queuedBefore = cleanupQueued(inst);
    const filesBefore = inst.delivered(rcpt);
    const subject = `marker ${randomUUID()}`;
    assert.match(await c.command('RSET'), /^250 /);
    assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
    assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /);
    assert.match(await c.command('DATA'), /^354 /);
    await c.send(`Subject: ${subject}\r\n\r\nmarker\r\n.\r\n`);
    const id = queueIdOf(await c.reply());
    await deliveredOnce(inst, rcpt, id);
    const fresh = inst.delivered(rcpt).filter((f) => !filesBefore.includes(f));
    assert.equal(fresh.length, 1, 'only the marker was delivered');
    assert.ok(fs.readFileSync(fresh[0], 'utf8').includes(subject));
    assert.equal(cleanupQueued(inst), queuedBefore + 1, 'only the marker was queued');
    assert.deepEqual(fs.readdirSync(path.join(inst.spool, 'incoming')), [], 'no queue file (nor a temporary one) in incoming/');
    assert.deepEqual(inst.queued('corrupt'), []);
  }

  it('relay from a client outside mynetworks: 554 5.7.1 at RCPT', async () => {
    const c = await session(outside);
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      const reply = await c.command('RCPT TO:<someone@elsewhere.test>');
      assert.equal(codes(reply), '554 5.7.1', reply);
      assert.match(reply, /Relay access denied/);
      assert.match(await c.command('DATA'), /^5\d\d /, 'no DATA without an accepted recipient');
      await assertOnlyMarkerFollows(outside, c);
    } finally { c.close(); }
    const log = outside.logs().find((e) => e.status === 'reject' && e.to === 'someone@elsewhere.test');
    assert.equal(log?.dsn, '5.7.1', 'the refusal is logged with its status code');
  });

  it('unknown user in our domain: 550 5.1.1 at RCPT', async () => {
    const c = await session(outside);
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      const reply = await c.command('RCPT TO:<nosuchuser@example.test>');
      assert.equal(codes(reply), '550 5.1.1', reply);
      await assertOnlyMarkerFollows(outside, c);
    } finally { c.close(); }
  });

  it('a message over message_size_limit: 552 5.3.4 after DATA', async () => {
    const c = await session(outside);
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /);
      assert.match(await c.command('DATA'), /^354 /);
      const line = `${'x'.repeat(78)}\r\n`;
      await c.send(`Subject: too big\r\n\r\n${line.repeat(Math.ceil(30000 / line.length))}.\r\n`);
      const reply = await c.reply();
      assert.equal(codes(reply), '552 5.3.4', reply);
      await assertOnlyMarkerFollows(outside, c);
    } finally { c.close(); }
  });

  it('a bare LF in DATA from outside mynetworks: 550 5.5.2', async () => {
    const c = await session(outside);
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /);
      assert.match(await c.command('DATA'), /^354 /);
      await c.send('Subject: x\r\n\r\nline1\nline2\r\n.\r\n');
      const reply = await c.reply();
      assert.equal(codes(reply), '550 5.5.2', reply);
      await assertOnlyMarkerFollows(outside, c);
    } finally { c.close(); }
  });

  it('a bare CR in DATA from outside mynetworks: 550 5.5.2', async () => {
    const c = await session(outside);
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /);
      assert.match(await c.command('DATA'), /^354 /);
      await c.send('Subject: x\r\n\r\nline1\rline2\r\n.\r\n');
      const reply = await c.reply();
      assert.equal(codes(reply), '550 5.5.2', reply);
      await assertOnlyMarkerFollows(outside, c);
    } finally { c.close(); }
  });

  it('a bare LF and a bare CR from inside mynetworks are accepted and stored as line ends', async () => {
    const c = await session(inside);
    let id: string;
    try {
      assert.match(await c.command(`MAIL FROM:<${SENDER}>`), /^250 /);
      assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /);
      assert.match(await c.command('DATA'), /^354 /);
      await c.send('Subject: x\r\n\r\nline1\nline2\rline3\r\n.\r\n');
      id = queueIdOf(await c.reply());
    } finally { c.close(); }
    const file = await deliveredOnce(inside, rcpt, id);
    const stored = fs.readFileSync(file, 'latin1');
    // Maildir files are stored with LF line ends and local keeps a bare CR as it is, so a CR
    // left in the file is one smtpd did not normalise. (A bare LF looks the same either way.)
    assert.ok(!stored.includes('\r'), `no stray CR in the stored message: ${JSON.stringify(stored)}`);
    assert.match(stored, /\nSubject: x\n/);
    assert.ok(stored.endsWith('\n\nline1\nline2\nline3\n'), `the body is the three lines sent: ${JSON.stringify(stored)}`);
    assertMaildirSize(file);
  });
});

describe('a configuration error stops start with file:line and exit status 1', () => {
  let inst: Instance;
  before(async () => { inst = await Instance.create(); });
  after(async () => { await inst?.destroy(); });

  /** Inserts `text` as a new line after the line matching `after` (or at the end); returns its line number. */
  function insertLine(file: string, text: string, afterLine?: RegExp): number {
    const lines = fs.readFileSync(file, 'utf8').replace(/\n$/, '').split('\n');
    const at = afterLine ? lines.findIndex((l) => afterLine.test(l)) + 1 : lines.length;
    assert.ok(at > 0, `${file} has a line matching ${afterLine}`);
    lines.splice(at, 0, text);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    return at + 1;
  }

  async function assertStartRefused(problem: RegExp): Promise<void> {
    const r = inst.tryCli(['start']);
    assert.equal(r.code, 1, `exit status 1 (stdout: ${r.stdout}, stderr: ${r.stderr})`);
    assert.match(r.stderr, problem);
    assert.equal(inst.masterPid(), null, 'no master pid file');
    await assert.rejects(RawSmtp.connect(inst.ports.smtp), /ECONNREFUSED/, 'nothing listens on the MX port');
  }

  it('a bad value in main.cf', async () => {
    const file = path.join(inst.etc, 'main.cf');
    const saved = fs.readFileSync(file);
    try {
      const line = insertLine(file, 'message_size_limit = lots', /^mydestination\s*=/);
      await assertStartRefused(new RegExp(`main\\.cf:${line}: message_size_limit: "lots" is not a whole number`));
    } finally { fs.writeFileSync(file, saved); }
  });

  it('an unknown service command in master.cf', async () => {
    const file = path.join(inst.etc, 'master.cf');
    const saved = fs.readFileSync(file);
    try {
      const line = insertLine(file, 'bogus     unix  -     1        bogus', /^\S+\s+inet\s/);
      await assertStartRefused(new RegExp(`master\\.cf:${line}: unknown service command "bogus"`));
    } finally { fs.writeFileSync(file, saved); }
  });
});

describe('a corrupt queue file is moved aside and the mail keeps flowing', () => {
  const rcpt = 'frank@example.test';
  const corruptId = 'FFFFFFFFFF00000ABCDE';
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: rcpt }] });
    await inst.start();
  });
  after(async () => { await inst?.destroy(); });

  it('moves it to corrupt/, logs it, and still delivers the next message', async () => {
    fs.writeFileSync(path.join(inst.spool, 'incoming', corruptId), 'this is not a queue file\n\x00\xff garbage', { mode: 0o600 });
    const message = testMessage(rcpt, 'after the corrupt file');
    const r = swaks(inst, rcpt, message);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = queueIdOf(r.stdout);
    await waitFor(`${corruptId} in corrupt/`, () => fs.existsSync(path.join(inst.spool, 'corrupt', corruptId)));
    const logged = await inst.waitForLog('the corrupt file logged', (e) => e.queue_id === corruptId && /corrupt/.test(e.msg));
    assert.equal(logged.level, 'warn');
    const file = await deliveredOnce(inst, rcpt, id);
    assertSameMessage(fs.readFileSync(file), message, rcpt, id, '\n');
    for (const q of ['incoming', 'active', 'deferred']) {
      assert.ok(!inst.queued(q).some((f) => path.basename(f) === corruptId), `${corruptId} is not left in ${q}/`);
    }
  });
});
