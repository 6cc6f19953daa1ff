// The queue file writer: a message held in memory (one write at commit) and one
// streamed to disk make the same file, byte for byte, and read back the same.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import {
  Spool, QueueFileWriter, readQueueFile, openMessage, appendStatus, CorruptQueueFile, Envelope, QUEUE_FILE_BUFFER_LIMIT,
} from '../../packages/common/dist/index.js';
import { tempDir, run, IS_ROOT } from './harness.js';

const ID = '006B0630222848865601';

function spool(): Spool {
  const root = tempDir('queuefile');
  fs.mkdirSync(path.join(root, 'incoming'));
  return new Spool(root);
}

function envelope(): Envelope {
  return {
    id: ID, sender: 'alice@example.test', arrival: Date.UTC(2026, 10, 24, 18, 22, 48), origin: 'smtpd',
    recipients: [{ address: 'bob@example.test' }, { address: 'carol@example.test', orcpt: 'rfc822;Carol@example.test' }],
    client: { address: '192.0.2.1', name: 'client.example.test', helo: 'client.example.test' },
  };
}

/** A message of `size` bytes of CRLF lines, in chunks of `chunk` bytes. */
function message(size: number): Buffer {
  const line = 'The quick brown fox jumps over the lazy dog 0123456789.\r\n';
  return Buffer.from(('Subject: test\r\n\r\n' + line.repeat(Math.ceil(size / line.length))).slice(0, size));
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts);
}

/** Write one queue file the way cleanup does; returns the file and whether it existed (streamed) before commit. */
async function write(sp: Spool, body: Buffer, chunk: number, opts: { bufferLimit?: number } = {}) {
  const w = await QueueFileWriter.create(sp, envelope(), opts);
  w.addStatus([{ type: 'rcpt', index: 1, status: 'bounced', dsn: '5.4.6', reason: 'alias loop', at: 1 }]);
  for (let i = 0; i < body.length; i += chunk) await w.write(body.subarray(i, i + chunk));
  w.addPrependedHeaders(Buffer.from('Authentication-Results: mx.example.test; spf=pass\r\n'));
  w.addEnvelopeNotes({ auth: { spf: 'pass' } });
  const beforeCommit = await readAll(w.openMessage());
  const tempExisted = fs.existsSync(sp.tempPathOf(ID));
  const size = w.messageSize;
  const file = await w.commit();
  return { file, beforeCommit, tempExisted, size };
}

test('queue file: a buffered and a streamed message make the same file and read back the same', async () => {
  for (const size of [0, 1, 4500, 70 * 1024, 300 * 1024]) {
    const body = message(size);
    const a = spool();
    const b = spool();
    try {
      const buffered = await write(a, body, 1000);
      const streamed = await write(b, body, 1000, { bufferLimit: 16 });
      assert.equal(buffered.tempExisted, size > QUEUE_FILE_BUFFER_LIMIT, `${size}: nothing on disk before commit unless it outgrew memory`);
      assert.equal(streamed.tempExisted, size > 16);
      assert.deepEqual(fs.readFileSync(buffered.file), fs.readFileSync(streamed.file), `${size}: same bytes`);
      assert.equal(buffered.size, size);
      assert.equal(streamed.size, size);
      const prepend = Buffer.from('Authentication-Results: mx.example.test; spf=pass\r\n');
      for (const r of [buffered, streamed]) {
        assert.deepEqual(r.beforeCommit, Buffer.concat([prepend, body]), `${size}: openMessage() before commit`);
        for (const keepMessage of [false, true]) {
          const info = await readQueueFile(r.file, { keepMessage });
          assert.equal(info.messageLength, size);
          assert.equal(info.envelope.id, ID);
          assert.deepEqual(info.envelope.auth, { spf: 'pass' }, 'N record merged');
          assert.equal(info.statuses.length, 1);
          assert.deepEqual(info.prepend, prepend);
          assert.equal(info.message !== undefined, keepMessage && info.fileSize < 64 * 1024, `${size}: message kept only from a file read whole`);
          assert.deepEqual(await readAll(openMessage(info)), Buffer.concat([prepend, body]), `${size}: delivered bytes`);
        }
      }
      assert.equal(fs.readdirSync(a.dir('incoming')).filter((n) => n.startsWith('.')).length, 0, 'no temporary file left');
    } finally {
      fs.rmSync(a.root, { recursive: true, force: true });
      fs.rmSync(b.root, { recursive: true, force: true });
    }
  }
});

test('queue file: a message that outgrows memory midway switches to streaming and stays exact', async () => {
  const sp = spool();
  try {
    const body = message(100 * 1024);
    const w = await QueueFileWriter.create(sp, envelope(), { bufferLimit: 40 * 1024 });
    for (let i = 0; i < body.length; i += 7000) {
      await w.write(body.subarray(i, i + 7000));
      assert.equal(fs.existsSync(sp.tempPathOf(ID)), i + 7000 > 40 * 1024, `after ${i + 7000} bytes`);
    }
    const file = await w.commit();
    const info = await readQueueFile(file);
    assert.equal(info.messageLength, body.length);
    assert.deepEqual(await readAll(openMessage(info)), body);
  } finally {
    fs.rmSync(sp.root, { recursive: true, force: true });
  }
});

test('queue file: abort leaves nothing behind, buffered or streamed', async () => {
  const sp = spool();
  try {
    for (const bufferLimit of [QUEUE_FILE_BUFFER_LIMIT, 16]) {
      const w = await QueueFileWriter.create(sp, envelope(), { bufferLimit });
      await w.write(message(1000));
      await w.abort();
      assert.deepEqual(fs.readdirSync(sp.dir('incoming')), []);
    }
  } finally {
    fs.rmSync(sp.root, { recursive: true, force: true });
  }
});

test('queue file: readQueueFile still finds truncation and appended status records, small or large', async () => {
  for (const size of [2000, 100 * 1024]) {
    const sp = spool();
    try {
      const { file } = await write(sp, message(size), 4096);
      await appendStatus(file, [{ type: 'attempt', at: 2, attempts: 1 }]);
      assert.equal((await readQueueFile(file)).statuses.length, 2);
      // a status record torn by a crash is ignored
      fs.appendFileSync(file, 'S 40\n{"type":"att');
      assert.equal((await readQueueFile(file)).statuses.length, 2);
      // a file cut inside the message is corrupt
      const whole = fs.readFileSync(file);
      fs.writeFileSync(file, whole.subarray(0, Math.floor(whole.length / 2)));
      await assert.rejects(readQueueFile(file), CorruptQueueFile);
      // and one whose end marker never made it
      const x = whole.indexOf('\nX\n');
      fs.writeFileSync(file, whole.subarray(0, x + 1));
      await assert.rejects(readQueueFile(file), /end marker missing/);
    } finally {
      fs.rmSync(sp.root, { recursive: true, force: true });
    }
  }
});

/** A size-limited tmpfs (root only: a missing privilege is a failure, never a skip). */
function tinyTmpfs(size: string): { dir: string; unmount: () => void } {
  assert.ok(IS_ROOT, 'this test mounts a tmpfs: run it as root (CI does)');
  const dir = tempDir('tinyfs');
  const r = run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir]);
  assert.equal(r.code, 0, `mount tmpfs: ${r.stderr}`);
  return { dir, unmount: () => { run('umount', ['-l', dir]); fs.rmSync(dir, { recursive: true, force: true }); } };
}

/** Fill the file system holding `dir` with one file; returns its path. Bounded by the file system's size. */
function fill(dir: string): string {
  const filler = path.join(dir, 'filler');
  const fd = fs.openSync(filler, 'w');
  const block = Buffer.alloc(4096, 0x41);
  try {
    for (let i = 0; i < 1 << 20; i++) fs.writeSync(fd, block);
    assert.fail('the file system never filled up');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally { fs.closeSync(fd); }
  return filler;
}

test('queue file: a status append torn by a full disk (short write, ENOSPC) is cut back to the last whole record', async () => {
  const fsys = tinyTmpfs('64k');
  try {
    fs.mkdirSync(path.join(fsys.dir, 'incoming'));
    const sp = new Spool(fsys.dir);
    const { file } = await write(sp, message(2000), 4096);
    await appendStatus(file, [{ type: 'attempt', at: 2, attempts: 1 }]);
    const before = fs.readFileSync(file);
    // the file's last page still has room, the file system has none: the next append writes part, then fails
    const filler = fill(fsys.dir);
    const big = { type: 'rcpt' as const, index: 0, status: 'deferred' as const, dsn: '4.4.1', reason: 'x'.repeat(9000), at: 3 };
    await assert.rejects(appendStatus(file, [big]), (e: NodeJS.ErrnoException) => e.code === 'ENOSPC');
    assert.deepEqual(fs.readFileSync(file), before, 'the file is cut back to its last whole record');
    // space again: a later record is appended after the whole ones and read back
    fs.unlinkSync(filler);
    await appendStatus(file, [{ type: 'rcpt', index: 0, status: 'sent', dsn: '2.0.0', reason: 'ok', at: 4 }]);
    const info = await readQueueFile(file);
    assert.deepEqual(info.statuses.map((s) => s.type), ['rcpt', 'attempt', 'rcpt']);
    assert.equal((info.statuses[2] as any).status, 'sent');
  } finally {
    fsys.unmount();
  }
});

test('queue file: a failed directory fsync after the rename withdraws the file (the client\'s retry is no duplicate)', async () => {
  const sp = spool();
  try {
    const failing = async () => { throw Object.assign(new Error('injected: EIO'), { code: 'EIO' }); };
    for (const bufferLimit of [QUEUE_FILE_BUFFER_LIMIT, 16]) {
      const w = await QueueFileWriter.create(sp, envelope(), { bufferLimit, syncDirectory: failing });
      await w.write(message(1000));
      await assert.rejects(w.commit(), /fsync|EIO/);
      assert.deepEqual(fs.readdirSync(sp.dir('incoming')), [], 'nothing left in incoming/ to be delivered');
    }
    // qmgr took the file before it could be withdrawn: it is queued, and commit says so
    fs.mkdirSync(path.join(sp.root, 'active'));
    const takenByQmgr = async () => {
      fs.renameSync(sp.pathOf('incoming', ID), path.join(sp.root, 'active', ID));
      throw Object.assign(new Error('injected: EIO'), { code: 'EIO' });
    };
    const w = await QueueFileWriter.create(sp, envelope(), { syncDirectory: takenByQmgr });
    await w.write(message(1000));
    await w.commit();
    assert.ok(fs.existsSync(path.join(sp.root, 'active', ID)));
  } finally {
    fs.rmSync(sp.root, { recursive: true, force: true });
  }
});
