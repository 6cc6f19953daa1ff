import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';

import { deliverToMaildir } from '../../packages/local/dist/maildir.js';
import { deliverToMbox, asctime } from '../../packages/local/dist/mbox.js';
import { MailboxError } from '../../packages/local/dist/errors.js';
import type { DeliveryInput } from '../../packages/local/dist/message-stream.js';
import { waitFor } from './harness.js';

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'postern-mailbox-'));
}

/** Splits buf into chunks of `size` bytes (small sizes exercise state across chunk boundaries). */
function chunks(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

function input(message: string | Buffer, opts: { sender?: string; prefix?: string; chunkSize?: number } = {}): DeliveryInput {
  const buf = Buffer.isBuffer(message) ? message : Buffer.from(message, 'utf8');
  return {
    prefix: Buffer.from(opts.prefix ?? 'Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.net\r\n'),
    open: () => Readable.from(chunks(buf, opts.chunkSize ?? 64 * 1024)),
    sender: opts.sender ?? 'alice@example.org',
    arrival: new Date(2026, 10, 24, 18, 22, 48),
    uid: null,
    gid: null,
  };
}

/** Reference transformation done on the whole text: CRLF -> LF. */
function lf(s: string): string {
  return s.replace(/\r\n/g, '\n');
}

/** Reference mboxrd quoting on the whole text. */
function mboxrd(s: string): string {
  return s.replace(/^(>*From )/gm, '>$1');
}

const MSG1 =
  'From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: first\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob,\r\nthis is the first message.\r\n';
const MSG2 =
  'From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: second\r\nMessage-ID: <2@example.org>\r\n\r\n' +
  'Line one\r\nFrom me\r\n>From already quoted\r\nnot From at start\r\nFro\r\n>\r\n\r\nbare\rCR kept\r\nlast line without newline';

const NAME_RE = /^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^,/]+),S=(\d+),W=(\d+)$/;

test('Maildir: two deliveries land in new/ with unique names and exact ,S= sizes', async () => {
  const dir = tempDir();
  const maildir = path.join(dir, 'users', 'bob', 'Maildir');
  const in1 = input(MSG1);
  const in2 = input(MSG2, { chunkSize: 1 }); // one byte at a time: CRLF split across every boundary
  const r1 = await deliverToMaildir(maildir, in1);
  const r2 = await deliverToMaildir(maildir, in2);

  for (const sub of ['tmp', 'new', 'cur']) {
    const st = fs.statSync(path.join(maildir, sub));
    assert.ok(st.isDirectory());
    assert.equal(st.mode & 0o777, 0o700, `${sub} mode`);
  }
  assert.deepEqual(fs.readdirSync(path.join(maildir, 'tmp')), [], 'tmp/ is left empty');
  const names = fs.readdirSync(path.join(maildir, 'new')).sort();
  assert.equal(names.length, 2);
  assert.notEqual(names[0], names[1]);
  assert.deepEqual(names, [path.basename(r1.path), path.basename(r2.path)].sort());
  assert.equal(path.dirname(r1.path), path.join(maildir, 'new'));

  const cases = [
    { r: r1, inp: in1, msg: MSG1 },
    { r: r2, inp: in2, msg: MSG2 },
  ];
  for (const { r, inp, msg } of cases) {
    const name = path.basename(r.path);
    const m = NAME_RE.exec(name);
    assert.ok(m, `name ${name} has the Maildir form`);
    assert.equal(Number(m[3]), process.pid);
    assert.ok(!m[5]!.includes('/') && !m[5]!.includes(':'));
    const st = fs.statSync(r.path);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(Number(m[6]), st.size, ',S= is the stored byte count');
    assert.equal(r.size, st.size);
    const content = fs.readFileSync(r.path, 'latin1');
    const expected = lf(inp.prefix.toString('latin1') + Buffer.from(msg).toString('latin1'));
    assert.equal(content, expected, 'content = prefix + message with LF endings');
    assert.ok(!content.includes('\r\n'));
    if (msg === MSG2) assert.ok(content.includes('bare\rCR kept'), 'a bare CR is kept');
    const lfCount = content.split('\n').length - 1;
    assert.equal(Number(m[7]), st.size + lfCount, ',W= is the CRLF size');
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: hostname with / and : is encoded', async () => {
  // Only checks the encoding rule on our own hostname when it has such characters;
  // otherwise just that the host part equals the hostname.
  const dir = tempDir();
  const r = await deliverToMaildir(dir, input(MSG1));
  const host = NAME_RE.exec(path.basename(r.path))![5];
  assert.equal(host, os.hostname().replace(/\//g, '\\057').replace(/:/g, '\\072'));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a message over 5 MiB is streamed in and stored exactly', async () => {
  const dir = tempDir();
  const line = 'The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz.\r\n';
  const lines = Math.ceil((6 * 1024 * 1024) / line.length);
  const header = 'Subject: big\r\n\r\n';
  // Expected hash and size of the stored (LF) form, computed independently.
  const want = createHash('sha256');
  const prefix = 'Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.net\r\n';
  want.update(lf(prefix + header));
  const lfLine = lf(line);
  for (let i = 0; i < lines; i++) want.update(lfLine);
  const wantSize = Buffer.byteLength(lf(prefix + header)) + lines * Buffer.byteLength(lfLine);
  assert.ok(wantSize > 5 * 1024 * 1024);

  const inp: DeliveryInput = {
    ...input(''),
    open: () =>
      Readable.from(
        (function* () {
          // Odd chunk size so CRLF pairs straddle chunk boundaries.
          let pending = Buffer.from(header);
          const block = Buffer.from(line.repeat(1000));
          let remaining = lines;
          while (remaining > 0) {
            const n = Math.min(1000, remaining);
            remaining -= n;
            pending = Buffer.concat([pending, n === 1000 ? block : Buffer.from(line.repeat(n))]);
            while (pending.length >= 65521) {
              yield pending.subarray(0, 65521);
              pending = pending.subarray(65521);
            }
          }
          if (pending.length) yield pending;
        })(),
      ),
  };
  const r = await deliverToMaildir(dir, inp);
  const st = fs.statSync(r.path);
  assert.equal(st.size, wantSize);
  assert.equal(r.size, wantSize);
  assert.equal(Number(NAME_RE.exec(path.basename(r.path))![6]), wantSize);
  const got = createHash('sha256').update(fs.readFileSync(r.path)).digest('hex');
  assert.equal(got, want.digest('hex'));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a failing message stream leaves nothing behind and throws a temporary MailboxError', async () => {
  const dir = tempDir();
  const inp: DeliveryInput = {
    ...input(''),
    open: () =>
      Readable.from(
        (async function* () {
          yield Buffer.from('Subject: x\r\n\r\npartial body\r\n');
          throw Object.assign(new Error('queue file read failed'), { code: 'EIO' });
        })(),
      ),
  };
  await assert.rejects(deliverToMaildir(dir, inp), (err: unknown) => {
    assert.ok(err instanceof MailboxError);
    assert.equal(err.temporary, true);
    return true;
  });
  assert.deepEqual(fs.readdirSync(path.join(dir, 'tmp')), []);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'new')), []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a message written in one piece and one streamed (small buffer) are stored the same, ,S= and ,W= exact', async () => {
  const dir = tempDir();
  const msg = MSG2 + '\r\n' + 'x'.repeat(3000) + '\r\n' + MSG1.repeat(50);
  const results = [];
  for (const bufferLimit of [undefined, 10, 1000]) {
    const maildir = path.join(dir, `box-${bufferLimit ?? 'default'}`);
    const r = await deliverToMaildir(maildir, input(msg, { chunkSize: 333 }), bufferLimit === undefined ? {} : { bufferLimit });
    const content = fs.readFileSync(r.path);
    const m = NAME_RE.exec(path.basename(r.path))!;
    assert.equal(Number(m[6]), content.length, `${bufferLimit}: ,S= is the stored size`);
    assert.equal(Number(m[7]), content.length + content.toString('latin1').split('\n').length - 1, `${bufferLimit}: ,W= is the CRLF size`);
    assert.deepEqual(fs.readdirSync(path.join(maildir, 'tmp')), []);
    results.push(content);
  }
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[2], results[0]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a failing stream after part of the message was written (streamed) leaves nothing behind', async () => {
  const dir = tempDir();
  const inp: DeliveryInput = {
    ...input(''),
    open: () => Readable.from((async function* () {
      yield Buffer.from('Subject: x\r\n\r\n' + 'body line\r\n'.repeat(100));
      throw Object.assign(new Error('queue file read failed'), { code: 'EIO' });
    })()),
  };
  await assert.rejects(deliverToMaildir(dir, inp, { bufferLimit: 64 }), (err: unknown) => err instanceof MailboxError && err.temporary);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'tmp')), []);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'new')), []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a Maildir removed after a delivery (its existence remembered) is made again for the next one', async () => {
  const dir = tempDir();
  const maildir = path.join(dir, 'bob', 'Maildir');
  await deliverToMaildir(maildir, input(MSG1));
  fs.rmSync(path.join(dir, 'bob'), { recursive: true, force: true });
  const r = await deliverToMaildir(maildir, input(MSG2));
  assert.equal(fs.readdirSync(path.join(maildir, 'new')).length, 1);
  for (const sub of ['tmp', 'new', 'cur']) assert.ok(fs.statSync(path.join(maildir, sub)).isDirectory());
  assert.ok(fs.existsSync(r.path));
  // only new/ gone: the move into it notices and makes it again
  fs.rmSync(path.join(maildir, 'new'), { recursive: true, force: true });
  const r2 = await deliverToMaildir(maildir, input(MSG1));
  assert.equal(path.dirname(r2.path), path.join(maildir, 'new'));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('Maildir: a file where the maildir should be is a permanent error', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'notadir');
  fs.writeFileSync(file, 'x');
  await assert.rejects(deliverToMaildir(path.join(file, 'Maildir'), input(MSG1)), (err: unknown) => {
    assert.ok(err instanceof MailboxError);
    assert.equal(err.temporary, false);
    return true;
  });
  fs.rmSync(dir, { recursive: true, force: true });
});

function pythonMbox(mboxPath: string): Array<{ from: string; subject: string; body: string }> {
  const script = [
    'import json, mailbox, sys',
    'out = []',
    'for m in mailbox.mbox(sys.argv[1]):',
    "    out.append({'from': m.get_from(), 'subject': m['subject'], 'body': m.get_payload()})",
    'print(json.dumps(out))',
  ].join('\n');
  const r = spawnSync('python3', ['-c', script, mboxPath], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Array<{ from: string; subject: string; body: string }>;
}

test('mbox: two messages, mboxrd quoting, parsed by Python mailbox', async () => {
  const dir = tempDir();
  const mbox = path.join(dir, 'bob');
  const in1 = input(MSG1);
  const in2 = input(MSG2, { sender: '', chunkSize: 3 });
  const r1 = await deliverToMbox(mbox, in1);
  const r2 = await deliverToMbox(mbox, in2);
  assert.ok(r1.locks.includes('dotlock'));
  assert.ok(!fs.existsSync(`${mbox}.lock`), 'dotlock removed');

  const st = fs.statSync(mbox);
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.size, r1.size + r2.size, 'returned sizes add up to the file size');

  const raw = fs.readFileSync(mbox, 'latin1');
  const date = asctime(in1.arrival);
  assert.equal(date, 'Tue Nov 24 18:22:48 2026');
  const body1 = lf(in1.prefix.toString('latin1') + MSG1);
  const body2 = mboxrd(lf(in2.prefix.toString('latin1') + MSG2));
  const expected = `From alice@example.org ${date}\n${body1}\n` + `From MAILER-DAEMON ${date}\n${body2}\n\n`;
  assert.equal(raw, expected);
  assert.ok(raw.includes('\n>From me\n'), '"From me" quoted');
  assert.ok(raw.includes('\n>>From already quoted\n'), '">From" quoted once more (mboxrd)');
  assert.ok(raw.includes('\nnot From at start\n'));
  assert.ok(!raw.includes('\r\n'));

  const parsed = pythonMbox(mbox);
  assert.equal(parsed.length, 2);
  assert.equal(parsed[0]!.subject, 'first');
  assert.equal(parsed[1]!.subject, 'second');
  assert.equal(parsed[0]!.from, `alice@example.org ${date}`);
  assert.equal(parsed[1]!.from, `MAILER-DAEMON ${date}`);
  assert.match(parsed[0]!.body, /^Hello Bob,\nthis is the first message\.\n/);
  // Python's mbox reader does not undo mboxrd quoting: the stored form is what it shows.
  assert.match(parsed[1]!.body, /^Line one\n>From me\n>>From already quoted\nnot From at start\nFro\n>\n\nbare\rCR kept\nlast line without newline\n/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('mbox: quoting and CRLF state survive every chunk boundary', async () => {
  const dir = tempDir();
  const msg = 'Subject: t\r\n\r\nFrom a\r\n>>>From b\r\n>>Frog\r\nFrom\r\nFrom  x\r\n>\r\nFr\r\n\r\nFrom end';
  for (const size of [1, 2, 3, 5, 7]) {
    const mbox = path.join(dir, `box${size}`);
    const inp = input(msg, { chunkSize: size, prefix: 'X-A: 1\r\n' });
    await deliverToMbox(mbox, inp);
    const raw = fs.readFileSync(mbox, 'latin1');
    const want = `From alice@example.org ${asctime(inp.arrival)}\n` + mboxrd(lf('X-A: 1\r\n' + msg)) + '\n\n';
    assert.equal(raw, want, `chunk size ${size}`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('mbox: a stale dotlock is removed', async () => {
  const dir = tempDir();
  const mbox = path.join(dir, 'bob');
  const lock = `${mbox}.lock`;
  fs.writeFileSync(lock, '12345\n');
  const old = new Date(Date.now() - 10 * 60 * 1000);
  fs.utimesSync(lock, old, old);
  const r = await deliverToMbox(mbox, input(MSG1), { lockTimeoutMs: 2000 });
  assert.ok(r.size > 0);
  assert.ok(!fs.existsSync(lock), 'stale lock gone, ours released');
  assert.equal(pythonMbox(mbox).length, 1);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The promise, or a failure naming what did not happen within a generous deadline. */
async function within<T>(what: string, p: Promise<T>, ms = 30000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms); });
  try { return await Promise.race([p, late]); } finally { clearTimeout(timer); }
}

test('mbox: a fresh dotlock held by someone else: delivery waits for it, fails temporarily at lockTimeoutMs, delivers once released', async () => {
  const dir = tempDir();
  const mbox = path.join(dir, 'bob');
  await deliverToMbox(mbox, input(MSG1));
  const before = fs.readFileSync(mbox);
  const lock = `${mbox}.lock`;
  fs.writeFileSync(lock, '');
  await assert.rejects(within('delivery against a held lock', deliverToMbox(mbox, input(MSG2), { lockTimeoutMs: 300 })), (err: unknown) => {
    assert.ok(err instanceof MailboxError, String(err));
    assert.equal(err.temporary, true);
    assert.match(err.message, /locked/);
    return true;
  });
  assert.ok(fs.existsSync(lock), "someone else's lock is left alone");
  assert.deepEqual(fs.readFileSync(mbox), before);

  // Order, not duration: the delivery finds the lock taken and tries again (each refused
  // O_EXCL create is seen through fs.promises.open), and appends only after the holder
  // releases it.
  const events: string[] = [];
  const realOpen = fs.promises.open;
  fs.promises.open = (async (file: fs.PathLike, ...rest: unknown[]) => {
    try {
      return await (realOpen as (...a: unknown[]) => Promise<fs.promises.FileHandle>)(file, ...rest);
    } catch (e) {
      if (file === lock && (e as NodeJS.ErrnoException).code === 'EEXIST') events.push('lock busy');
      throw e;
    }
  }) as typeof fs.promises.open;
  try {
    const delivery = deliverToMbox(mbox, input(MSG2), { lockTimeoutMs: 60000 })
      .then(() => { events.push('delivered'); }, (e: Error) => { events.push(`failed: ${e.message}`); });
    await waitFor('the delivery to find the lock taken twice (or to end)',
      () => events.filter((e) => e === 'lock busy').length >= 2 || events.some((e) => e !== 'lock busy'), 30000, 5);
    assert.deepEqual(events.filter((e) => e !== 'lock busy'), [], `the delivery ended while the lock was held: ${events.join(', ')}`);
    events.push('released');
    fs.unlinkSync(lock);
    await within('the delivery after the lock was released', delivery);
  } finally {
    fs.promises.open = realOpen;
  }
  // an attempt already under way at the release may still report the lock busy
  assert.deepEqual(events.filter((e) => e !== 'lock busy').slice(-2), ['released', 'delivered'], events.join(', '));
  assert.ok(events.indexOf('released') >= 2 && events.slice(0, events.indexOf('released')).every((e) => e === 'lock busy'), events.join(', '));
  assert.ok(!fs.existsSync(lock), 'our own dotlock released');
  assert.deepEqual(pythonMbox(mbox).map((m) => m.subject), ['first', 'second']);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('mbox: a failure midway truncates the mailbox back to its original size', async () => {
  const dir = tempDir();
  const mbox = path.join(dir, 'bob');
  await deliverToMbox(mbox, input(MSG1));
  const before = fs.readFileSync(mbox);
  const inp: DeliveryInput = {
    ...input(''),
    open: () =>
      Readable.from(
        (async function* () {
          yield Buffer.from('Subject: x\r\n\r\n' + 'partial body line\r\n'.repeat(10000));
          throw new Error('queue file read failed');
        })(),
      ),
  };
  await assert.rejects(deliverToMbox(mbox, inp), (err: unknown) => err instanceof MailboxError && err.temporary);
  assert.deepEqual(fs.readFileSync(mbox), before);
  assert.ok(!fs.existsSync(`${mbox}.lock`));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('mbox: an fcntl lock held by another process (as Dovecot/mutt take it) is honoured', async (t) => {
  const dir = tempDir();
  const mbox = path.join(dir, 'bob');
  const r0 = await deliverToMbox(mbox, input(MSG1));
  // Debian on Linux (CI) has perl and OFD locks: without them this is a failure, not a skip
  assert.ok(r0.locks.includes('fcntl'), `fcntl (OFD) locking must be available (perl-base, 64-bit Linux); got ${r0.locks.join('+')}`);
  const before = fs.readFileSync(mbox);
  // A classic POSIX fcntl lock held by a separate process until its stdin closes.
  const holder: ChildProcess = spawn(
    'python3',
    ['-c', 'import fcntl, sys\nf = open(sys.argv[1], "a")\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint("locked", flush=True)\nsys.stdin.read()', mbox],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.once('data', () => resolve());
    holder.once('error', reject);
    holder.once('exit', () => reject(new Error('lock holder exited')));
  });
  try {
    await assert.rejects(deliverToMbox(mbox, input(MSG2), { lockTimeoutMs: 300 }), (err: unknown) => {
      assert.ok(err instanceof MailboxError);
      assert.equal(err.temporary, true);
      assert.match(err.message, /fcntl/);
      return true;
    });
    assert.deepEqual(fs.readFileSync(mbox), before);
    assert.ok(!fs.existsSync(`${mbox}.lock`), 'dotlock released after the fcntl timeout');
  } finally {
    holder.stdin!.end();
    await new Promise((resolve) => holder.once('close', resolve));
  }
  // While we hold the lock, a classic fcntl locker is refused: check from inside a slow delivery.
  let checked = false;
  const slow: DeliveryInput = {
    ...input(''),
    open: () =>
      Readable.from(
        (async function* () {
          yield Buffer.from('Subject: slow\r\n\r\nbody\r\n');
          const r = spawnSync('python3', [
            '-c',
            'import fcntl, sys\nf = open(sys.argv[1], "a")\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print("free")\nexcept OSError:\n    print("busy")',
            mbox,
          ]);
          assert.equal(r.stdout.toString().trim(), 'busy');
          checked = true;
          yield Buffer.from('more\r\n');
        })(),
      ),
  };
  const r = await deliverToMbox(mbox, slow);
  assert.ok(checked);
  assert.deepEqual(r.locks, ['dotlock', 'fcntl']);
  assert.equal(pythonMbox(mbox).length, 2);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('ownership: created dirs and files are chowned to uid/gid when running as root', async (t) => {
  assert.ok(process.getuid?.() === 0, 'this test runs as root (CI does): it chowns files to another uid');
  const dir = tempDir();
  const owner = { uid: 4321, gid: 4322 };
  const maildir = path.join(dir, 'example.net', 'bob', 'Maildir');
  const r = await deliverToMaildir(maildir, { ...input(MSG1), ...owner });
  for (const p of [path.join(dir, 'example.net'), path.join(dir, 'example.net', 'bob'), maildir, ...['tmp', 'new', 'cur'].map((s) => path.join(maildir, s)), r.path]) {
    const st = fs.statSync(p);
    assert.deepEqual({ uid: st.uid, gid: st.gid }, owner, p);
  }
  assert.equal(fs.statSync(dir).uid, 0, 'pre-existing parent untouched');

  const mbox = path.join(dir, 'bob.mbox');
  await deliverToMbox(mbox, { ...input(MSG1), ...owner });
  const st = fs.statSync(mbox);
  assert.deepEqual({ uid: st.uid, gid: st.gid }, owner);
  // An existing mailbox keeps its owner.
  const other = path.join(dir, 'carol.mbox');
  fs.writeFileSync(other, '', { mode: 0o600 });
  await deliverToMbox(other, { ...input(MSG1), ...owner });
  assert.equal(fs.statSync(other).uid, 0);
  fs.rmSync(dir, { recursive: true, force: true });
});
