/**
 * The queue file: one file per message holding the envelope, the message bytes
 * and the per-recipient results. Format version 1 (docs/queue-file.md):
 *
 *   POSTERN-QUEUE 1\n
 *   E <len>\n<envelope JSON>\n
 *   M <16-digit len>\n<message bytes>\n
 *   P <len>\n<header bytes>\n        0..n, headers computed after the body (DKIM, ...),
 *                                    delivered in front of the message
 *   N <len>\n<JSON>\n               0..n, envelope facts learnt after the body (message
 *                                    authentication results), merged into the envelope
 *   X\n                              end of what cleanup wrote
 *   S <len>\n<status JSON>\n          0..n, appended by qmgr
 *
 * Only qmgr appends (and `postern queue expire` on a stopped system, through
 * queue-ops.ts), and a record torn by a crash is ignored, so a recipient is
 * at worst delivered once more; a failed append (full disk) is cut back to the
 * last whole record, so later records stay readable.
 *
 * Every call but fsync is made in line (util/files.ts, fsyncDescriptor): a
 * spool on a local file system answers in microseconds.
 */
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { createReadStream } from 'node:fs';
import { Spool } from './spool.js';
import { syncDirectory } from '../util/group-commit.js';
import { fsyncDescriptor, writeAllSync } from '../util/files.js';

export const QUEUE_FILE_VERSION = 1;
const MAGIC = Buffer.from(`POSTERN-QUEUE ${QUEUE_FILE_VERSION}\n`);
const LEN_WIDTH = 16;

export interface Recipient {
  address: string;
  /** DSN ORCPT as the client gave it (`rfc822;addr`, xtext decoded), else the address before alias expansion. */
  orcpt?: string;
  notify?: string[];
}

export interface Envelope {
  id: string;
  sender: string;
  recipients: Recipient[];
  /** Arrival, ms since the epoch. */
  arrival: number;
  origin: 'smtpd' | 'pickup' | 'bounce' | 'local';
  client?: { address: string; name: string; helo: string };
  protocol?: string;
  tls?: string | null;
  sasl?: string;
  /** Local submission (pickup): the maildrop file owner's uid and login name, the only identity trusted. */
  uid?: number;
  user?: string;
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /** RFC 8689 REQUIRETLS: relay only over verified TLS to a server that offers REQUIRETLS (smtpd alone sets it). */
  requireTls?: boolean;
  /** Message authentication verdicts (from an N record): what no-backscatter decides on. */
  auth?: { spf?: string; dkimAligned?: boolean; dmarc?: string };
}

export type RecipientStatus = 'sent' | 'bounced' | 'deferred';

export type StatusRecord =
  | { type: 'rcpt'; index: number; status: RecipientStatus; dsn: string; reason: string; relay?: string; at: number }
  | { type: 'attempt'; at: number; attempts: number }
  | { type: 'flags'; expire?: boolean; warned?: boolean };

export class CorruptQueueFile extends Error {
  constructor(readonly file: string, problem: string) {
    super(`${file}: corrupt queue file: ${problem}`);
    this.name = 'CorruptQueueFile';
  }
}

export interface QueueFileWriterOptions {
  bufferLimit?: number;
  /** The fsync of incoming/ after the rename (tests inject a failing one). */
  syncDirectory?: (dir: string) => Promise<void>;
}

/** Messages up to this size are held in memory and written with one write at commit. */
export const QUEUE_FILE_BUFFER_LIMIT = 256 * 1024;
/** The incoming/ directory's descriptor is kept this long after its last fsync. */
const INCOMING_KEEP_OPEN_MS = 2000;

/**
 * Writes one queue file. A message up to `bufferLimit` bytes is held in memory
 * and written at commit with one write, the real M length in place: no file
 * exists before commit, so an aborted message costs no file system work. A
 * bigger one is streamed to incoming/.ID as it arrives, its M length filled in
 * at commit. Either way the file is the same byte for byte.
 */
export class QueueFileWriter {
  private written = 0;
  /** Message bytes while they fit in memory; null once streaming to the file. */
  private buffer: Buffer | null = Buffer.alloc(0);
  /** The temporary file's descriptor, once streaming (or committing). */
  private fd: number | null = null;
  private created = false;
  private position = 0;
  private prepend: Buffer[] = [];
  private notes: Record<string, unknown>[] = [];
  private statuses: StatusRecord[] = [];
  /** Where the streamed message went when moved aside (moveAside), else null. */
  private aside: string | null = null;

  private constructor(readonly spool: Spool, readonly id: string, private readonly envelopeJson: Buffer,
    private readonly bufferLimit: number, private readonly syncDir: (dir: string) => Promise<void>) {}

  /** Start a new queue file for the envelope (nothing is written before the message outgrows memory or is committed). */
  static async create(spool: Spool, envelope: Envelope, options: QueueFileWriterOptions = {}): Promise<QueueFileWriter> {
    return new QueueFileWriter(spool, envelope.id, Buffer.from(JSON.stringify(envelope)), options.bufferLimit ?? QUEUE_FILE_BUFFER_LIMIT,
      options.syncDirectory ?? ((dir) => syncDirectory(dir, { keepOpenMs: INCOMING_KEEP_OPEN_MS })));
  }

  /** Magic, E record and the M record's header with the message length given. */
  private head(messageLength: number): Buffer {
    return Buffer.concat([MAGIC, Buffer.from(`E ${this.envelopeJson.length}\n`), this.envelopeJson,
      Buffer.from(`\nM ${String(messageLength).padStart(LEN_WIDTH, '0')}\n`)]);
  }

  /** Where the message bytes start in the file. */
  private get messageStart(): number {
    return MAGIC.length + `E ${this.envelopeJson.length}\n`.length + this.envelopeJson.length + `\nM \n`.length + LEN_WIDTH;
  }

  private put(buf: Buffer): void {
    writeAllSync(this.fd!, buf, this.position, this.spool.tempPathOf(this.id));
    this.position += buf.length;
  }

  /** One writev at the current position, finishing a short write with plain writes. */
  private putAll(bufs: Buffer[]): void {
    const total = bufs.reduce((n, b) => n + b.length, 0);
    const written = fs.writevSync(this.fd!, bufs, this.position);
    this.position += written;
    if (written < total) this.put(Buffer.concat(bufs).subarray(written));
  }

  private createFile(): void {
    this.fd = fs.openSync(this.spool.tempPathOf(this.id), 'wx', 0o640);
    this.created = true;
  }

  /** Append message bytes; awaiting each call is the backpressure (one call at a time). */
  async write(chunk: Buffer): Promise<void> {
    if (this.buffer) {
      if (this.written + chunk.length <= this.bufferLimit) {
        this.hold(chunk);
        return;
      }
      // too big for memory: from here on the message streams to the file
      const held = this.buffer.subarray(0, this.written);
      this.buffer = null;
      this.createFile();
      this.putAll([this.head(0), held]);
    }
    this.put(chunk);
    this.written += chunk.length;
  }

  /** Copy a chunk into the in-memory message, growing it by doubling (callers may reuse their buffers). */
  private hold(chunk: Buffer): void {
    const need = this.written + chunk.length;
    if (need > this.buffer!.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.bufferLimit, Math.max(need, 2 * this.buffer!.length, 8192)));
      this.buffer!.copy(grown, 0, 0, this.written);
      this.buffer = grown;
    }
    chunk.copy(this.buffer!, this.written);
    this.written = need;
  }

  get messageSize(): number { return this.written; }

  /** Headers to deliver in front of the message, computed once the body is known. */
  addPrependedHeaders(headers: Buffer): void { this.prepend.push(headers); }

  /**
   * The message as it will be delivered, as far as it is known now: the prepended
   * headers, then the bytes written, from memory or streamed back from the
   * temporary file (DKIM signs this just before commit, without holding a big
   * body in memory).
   */
  openMessage(): Readable {
    const prepend = Buffer.concat(this.prepend);
    if (this.buffer) {
      const parts = [prepend, this.buffer.subarray(0, this.written)].filter((b) => b.length > 0);
      return Readable.from(parts);
    }
    const body = this.written > 0
      ? createReadStream(this.aside ?? this.spool.tempPathOf(this.id), { start: this.messageStart, end: this.messageStart + this.written - 1, highWaterMark: 256 * 1024 })
      : Readable.from([]);
    if (!prepend.length) return body;
    return Readable.from((async function* () {
      yield prepend;
      for await (const chunk of body) yield chunk as Buffer;
    })());
  }

  /**
   * cleanup rewrites a message a milter changed into a new file of the same id:
   * the temporary file written so far (if any) moves to a side name, where
   * openMessage() still reads it and abort() removes it.
   */
  async moveAside(): Promise<void> {
    if (!this.created || this.aside) return;
    const fd = this.fd;
    this.fd = null;
    if (fd !== null) fs.closeSync(fd);
    const aside = `${this.spool.tempPathOf(this.id)}.orig`;
    fs.renameSync(this.spool.tempPathOf(this.id), aside);
    this.aside = aside;
  }

  /** Envelope facts known only after the body (e.g. authentication results). */
  addEnvelopeNotes(notes: Record<string, unknown>): void { this.notes.push(notes); }

  /**
   * Recipient results known before any delivery (cleanup bounces an alias loop):
   * written after the end marker, as qmgr's own status records are.
   */
  addStatus(records: StatusRecord[]): void { this.statuses.push(...records); }

  /** Everything after the message: its closing newline, P and N records, the end marker, S records. */
  private tail(): Buffer {
    const tail: Buffer[] = [Buffer.from('\n')];
    for (const p of this.prepend) tail.push(Buffer.from(`P ${p.length}\n`), p, Buffer.from('\n'));
    for (const n of this.notes) {
      const b = Buffer.from(JSON.stringify(n));
      tail.push(Buffer.from(`N ${b.length}\n`), b, Buffer.from('\n'));
    }
    tail.push(Buffer.from('X\n'));
    for (const r of this.statuses) {
      const b = Buffer.from(JSON.stringify(r));
      tail.push(Buffer.from(`S ${b.length}\n`), b, Buffer.from('\n'));
    }
    return Buffer.concat(tail);
  }

  /**
   * Make the file durable and visible in incoming/: the point after which smtpd
   * may say 250. Write, fsync the file, rename it into place, fsync incoming/
   * (group-committed with the other messages being committed at the same time).
   */
  async commit(queue: 'incoming' | 'hold' = 'incoming'): Promise<string> {
    if (this.buffer) {
      this.createFile();
      this.putAll([this.head(this.written), this.buffer.subarray(0, this.written), this.tail()]);
      this.buffer = null;
    } else {
      const len = Buffer.from(String(this.written).padStart(LEN_WIDTH, '0'));
      writeAllSync(this.fd!, len, this.messageStart - LEN_WIDTH - 1, this.spool.tempPathOf(this.id));
      this.put(this.tail());
    }
    const fd = this.fd!;
    try {
      await fsyncDescriptor(fd);
    } finally {
      // abort() then only unlinks; the descriptor is never closed twice
      this.fd = null;
      fs.closeSync(fd);
    }
    // hold/: a milter quarantined the message; it waits there for `postern queue release`
    const final = this.spool.pathOf(queue, this.id);
    fs.renameSync(this.spool.tempPathOf(this.id), final);
    this.created = false;
    try {
      await this.syncDir(this.spool.dir(queue));
    } catch (e) {
      // The entry's durability is unknown, and the sender will be told 4xx and
      // retry: withdraw the file so the retry is not a second copy
      // (docs/security.md, "Directory fsync failing after the rename").
      try {
        fs.unlinkSync(final);
      } catch (u) {
        // qmgr already took it (incoming/ -> active/): it is queued and will be
        // delivered, so a 4xx would make the retry a duplicate; report success
        if ((u as NodeJS.ErrnoException).code === 'ENOENT') return final;
        throw e;
      }
      await this.syncDir(this.spool.dir(queue)).catch(() => undefined);
      throw e;
    }
    return final;
  }

  async abort(): Promise<void> {
    this.buffer = null;
    const fd = this.fd;
    this.fd = null;
    if (fd !== null) try { fs.closeSync(fd); } catch { /* already unusable */ }
    if (this.created) try { fs.unlinkSync(this.aside ?? this.spool.tempPathOf(this.id)); } catch { /* already gone */ }
    this.created = false;
  }
}

export interface QueueFileInfo {
  file: string;
  envelope: Envelope;
  messageOffset: number;
  messageLength: number;
  /** Concatenated P records. */
  prepend: Buffer;
  statuses: StatusRecord[];
  fileSize: number;
  /** The message bytes, when the reader asked to keep them and the file was read whole (see readQueueFile). */
  message?: Buffer;
}

/** Parse `T <len>\n` at pos; returns [type, len, payloadStart]. */
function recordHeader(buf: Buffer, pos: number, file: string): [string, number, number] {
  const nl = buf.indexOf(10, pos);
  if (nl < 0 || nl - pos > 24) throw new CorruptQueueFile(file, `truncated record at offset ${pos}`);
  const m = /^([A-Z])(?: (\d+))?$/.exec(buf.toString('latin1', pos, nl));
  if (!m) throw new CorruptQueueFile(file, `bad record header at offset ${pos}`);
  return [m[1], m[2] === undefined ? -1 : parseInt(m[2], 10), nl + 1];
}

/** A file shorter than this is read in one read (no stat, no second read). */
const FIRST_READ = 64 * 1024;

function readFully(fd: number, buf: Buffer, position: number): number {
  let n = 0;
  while (n < buf.length) {
    const bytesRead = fs.readSync(fd, buf, n, buf.length - n, position + n);
    if (bytesRead === 0) break;
    n += bytesRead;
  }
  return n;
}

/**
 * Read a queue file's envelope, prepended headers and status records. A small
 * file is read whole in one read; with `keepMessage` its message bytes are
 * kept in `message` so openMessage() needs no second pass over the file (the
 * delivery agents ask for this; qmgr, holding many files at once, does not).
 */
export async function readQueueFile(file: string, options: { keepMessage?: boolean } = {}): Promise<QueueFileInfo> {
  const fd = fs.openSync(file, 'r');
  try {
    const first = Buffer.allocUnsafe(FIRST_READ);
    const got = readFully(fd, first, 0);
    // a short read is the whole file: no stat needed
    const whole = got < FIRST_READ;
    const size = whole ? got : fs.fstatSync(fd).size;
    let head = first.subarray(0, whole ? got : Math.min(size, FIRST_READ));
    if (!head.subarray(0, MAGIC.length).equals(MAGIC)) throw new CorruptQueueFile(file, 'not a version 1 queue file');
    let [type, envLen, envStart] = recordHeader(head, MAGIC.length, file);
    if (type !== 'E') throw new CorruptQueueFile(file, 'envelope record missing');
    if (envStart + envLen + 40 > head.length && size > head.length) {
      head = Buffer.alloc(Math.min(size, envStart + envLen + 64));
      readFully(fd, head, 0);
    }
    if (envStart + envLen + 1 > head.length) throw new CorruptQueueFile(file, 'envelope truncated');
    let envelope: Envelope;
    try { envelope = JSON.parse(head.toString('utf8', envStart, envStart + envLen)); } catch {
      throw new CorruptQueueFile(file, 'envelope is not valid JSON');
    }
    if (!envelope || typeof envelope.sender !== 'string' || !Array.isArray(envelope.recipients) || !envelope.id) {
      throw new CorruptQueueFile(file, 'envelope lacks sender, recipients or id');
    }
    const [mType, messageLength, messageOffset] = recordHeader(head, envStart + envLen + 1, file);
    if (mType !== 'M' || messageLength < 0) throw new CorruptQueueFile(file, 'message record missing');
    const tailStart = messageOffset + messageLength;
    if (tailStart + 3 > size) throw new CorruptQueueFile(file, 'message truncated');
    let tail: Buffer;
    if (whole) tail = first.subarray(tailStart, size);
    else {
      tail = Buffer.alloc(size - tailStart);
      readFully(fd, tail, tailStart);
    }
    if (tail[0] !== 10) throw new CorruptQueueFile(file, 'message length does not match');
    const prepend: Buffer[] = [];
    const statuses: StatusRecord[] = [];
    let pos = 1;
    let ended = false;
    while (pos < tail.length) {
      let rec: [string, number, number];
      try { rec = recordHeader(tail, pos, file); } catch (e) {
        if (ended) break; // a status record torn by a crash: ignore it
        throw e;
      }
      const [t, len, start] = rec;
      if (t === 'X') { ended = true; pos = start; continue; }
      if (len < 0 || start + len + 1 > tail.length) {
        if (ended) break;
        throw new CorruptQueueFile(file, `record ${t} truncated`);
      }
      const payload = tail.subarray(start, start + len);
      if (t === 'P' && !ended) prepend.push(Buffer.from(payload));
      else if (t === 'N' && !ended) {
        try { Object.assign(envelope, JSON.parse(payload.toString('utf8')), { id: envelope.id }); } catch {
          throw new CorruptQueueFile(file, 'envelope note is not valid JSON');
        }
      }
      else if (t === 'S' && ended) {
        try { statuses.push(JSON.parse(payload.toString('utf8'))); } catch { break; }
      } else throw new CorruptQueueFile(file, `unexpected record ${t}`);
      pos = start + len + 1;
    }
    if (!ended) throw new CorruptQueueFile(file, 'end marker missing (incomplete write)');
    const info: QueueFileInfo = { file, envelope, messageOffset, messageLength, prepend: Buffer.concat(prepend), statuses, fileSize: size };
    // a copy: the 64 KiB read buffer is not kept alive for a few KiB of message
    if (whole && options.keepMessage) info.message = Buffer.from(first.subarray(messageOffset, tailStart));
    return info;
  } finally {
    fs.closeSync(fd);
  }
}

/** The message as delivered: prepended headers, then the stored bytes, from memory or streamed from disk. */
export function openMessage(info: QueueFileInfo): Readable {
  if (info.message) return Readable.from([info.prepend, info.message].filter((b) => b.length > 0));
  const body = info.messageLength > 0
    ? createReadStream(info.file, { start: info.messageOffset, end: info.messageOffset + info.messageLength - 1, highWaterMark: 256 * 1024 })
    : Readable.from([]);
  if (!info.prepend.length) return body;
  return Readable.from((async function* () {
    yield info.prepend;
    for await (const chunk of body) yield chunk as Buffer;
  })());
}

/**
 * Append status records. A write can be short (ENOSPC midway) or fail, and
 * the fsync can fail: then the file is cut back to its size before the append,
 * so no half record is left for later records to follow (the reader stops at
 * a torn record, and what came after it would be lost), and the error is thrown.
 */
export async function appendStatus(file: string, records: StatusRecord[]): Promise<void> {
  const parts: Buffer[] = [];
  for (const r of records) {
    const b = Buffer.from(JSON.stringify(r));
    parts.push(Buffer.from(`S ${b.length}\n`), b, Buffer.from('\n'));
  }
  const buf = Buffer.concat(parts);
  // r+ and explicit positions, not O_APPEND: we know where the whole records end
  const fd = fs.openSync(file, 'r+');
  try {
    const start = fs.fstatSync(fd).size;
    try {
      writeAllSync(fd, buf, start, `${file} (appending a status record)`);
      await fsyncDescriptor(fd);
    } catch (e) {
      try { fs.ftruncateSync(fd, start); } catch { /* the error below says enough */ }
      await fsyncDescriptor(fd).catch(() => undefined);
      throw e;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Per-recipient state after replaying the status records. */
export interface RecipientState { index: number; address: string; status: RecipientStatus | 'pending'; dsn?: string; reason?: string }

export function recipientStates(info: QueueFileInfo): RecipientState[] {
  const states: RecipientState[] = info.envelope.recipients.map((r, index) => ({ index, address: r.address, status: 'pending' }));
  for (const s of info.statuses) {
    if (s.type !== 'rcpt' || !states[s.index]) continue;
    const st = states[s.index];
    if (st.status === 'sent' || st.status === 'bounced') continue; // final states stay final
    Object.assign(st, { status: s.status, dsn: s.dsn, reason: s.reason });
  }
  return states;
}

export function attemptCount(info: QueueFileInfo): number {
  let n = 0;
  for (const s of info.statuses) if (s.type === 'attempt') n = Math.max(n, s.attempts);
  return n;
}
