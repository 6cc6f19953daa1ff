/**
 * Mailbox writers for the `local` delivery service: Maildir and mbox.
 *
 * Both writers stream the message (prefix + queue bytes) to disk chunk by chunk,
 * awaiting each write before reading the next chunk, so a big message is never held
 * whole in memory and a slow disk applies backpressure to the reader. The Maildir
 * writer first collects up to MAILDIR_BUFFER_LIMIT bytes in memory, so a typical
 * message costs one write (file system calls, not bytes, are what a delivery costs).
 *
 * Line endings: the queue stores the message with CRLF line endings (SMTP's wire
 * form). Both mailbox formats are stored with LF line endings, which is what local
 * mail readers (mutt, Dovecot's mbox and Maildir code, Python's `mailbox`, ...) expect:
 *  - Maildir: Dovecot accepts either, but other readers and tools (grep, formail,
 *    mutt's Maildir support) assume LF, and Dovecot's own LDA/LMTP writes LF. We
 *    convert CRLF -> LF while writing, and the `,S=` size in the file name is the
 *    exact byte count of the LF file as stored. We also add Dovecot's `,W=`
 *    (the "virtual", CRLF size: stored size + number of LFs) so Dovecot can answer
 *    RFC822.SIZE without reading the file.
 *  - mbox: the format is LF-only by definition.
 * A bare CR (not followed by LF) is kept as it is; the CR of a CRLF split across two
 * chunks is held back until the next chunk shows whether an LF follows.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { syncDirectory } from '@postern/common';

export interface DeliveryInput {
  /** Lines to put before the message, already CRLF-terminated, e.g. "Return-Path: <a@b>\r\nDelivered-To: u@d\r\n" */
  prefix: Buffer;
  /** Factory for a fresh readable stream of the message bytes (CRLF line endings as stored in the queue). */
  open(): NodeJS.ReadableStream;
  /** Envelope sender ('' for null sender), used for mbox's From_ line. */
  sender: string;
  arrival: Date;
  /** Owner for created files/dirs, applied with fchown when running as root (otherwise skipped). */
  uid: number | null;
  gid: number | null;
}

export interface MboxOptions {
  /** Total time to wait for the dotlock and the fcntl lock together. Default 10000 ms. */
  lockTimeoutMs?: number;
  /**
   * Take an fcntl-compatible lock in addition to the dotlock (see `lockFcntl` below).
   * Default true; when the platform cannot do it, delivery proceeds with the dotlock only
   * and the result's `locks` says so.
   */
  fcntlLock?: boolean;
}

export interface MboxResult {
  /** Bytes appended to the mbox (From_ line, message, trailing blank line). */
  size: number;
  /** The locks that were actually held during the append. */
  locks: Array<'dotlock' | 'fcntl'>;
}

/** A delivery failure. `temporary` tells the caller whether to defer (4xx) or bounce (5xx). */
export class MailboxError extends Error {
  temporary: boolean;
  /** errno code of the underlying failure, when there is one. */
  code?: string;
  constructor(message: string, temporary: boolean, options?: { cause?: unknown; code?: string }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'MailboxError';
    this.temporary = temporary;
    if (options?.code !== undefined) this.code = options.code;
  }
}

/** Everything is worth retrying except a path that can never work (a file where a directory must be, or vice versa). */
const PERMANENT_CODES = new Set(['EISDIR', 'ENOTDIR']);

function errCode(err: unknown): string | undefined {
  const c = (err as NodeJS.ErrnoException | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

function toMailboxError(what: string, err: unknown): MailboxError {
  if (err instanceof MailboxError) return err;
  const code = errCode(err);
  const msg = err instanceof Error ? err.message : String(err);
  return new MailboxError(`${what}: ${msg}`, !(code && PERMANENT_CODES.has(code)), { cause: err, code });
}

const LF = 0x0a;
const CR = 0x0d;
const GT = 0x3e;

/** Streaming CRLF -> LF converter; state (a trailing CR) is kept across chunk boundaries. */
class CrlfToLf {
  private pendingCR = false;

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const out = Buffer.allocUnsafe(chunk.length + 1);
    let o = 0;
    let i = 0;
    if (this.pendingCR) {
      this.pendingCR = false;
      if (chunk[0] === LF) {
        out[o++] = LF;
        i = 1;
      } else {
        out[o++] = CR; // bare CR: keep it
      }
    }
    while (i < chunk.length) {
      const cr = chunk.indexOf(CR, i);
      if (cr === -1) {
        o += chunk.copy(out, o, i);
        break;
      }
      o += chunk.copy(out, o, i, cr);
      if (cr === chunk.length - 1) {
        this.pendingCR = true;
        break;
      }
      if (chunk[cr + 1] === LF) {
        out[o++] = LF;
        i = cr + 2;
      } else {
        out[o++] = CR;
        i = cr + 1;
      }
    }
    return out.subarray(0, o);
  }

  end(): Buffer {
    if (!this.pendingCR) return Buffer.alloc(0);
    this.pendingCR = false;
    return Buffer.from([CR]);
  }
}

const FROM_ = Buffer.from('From ', 'latin1');
const GT_FROM_ = Buffer.from('>From ', 'latin1');

/**
 * Streaming mboxrd quoting on LF text: a line matching /^>*From / gets one more '>'.
 * Adding the '>' right before "From " is the same as adding it at the start of the
 * line (the line's leading run of '>' is unchanged either way), so the '>' run can be
 * passed through as it arrives and only a partial "From " (at most 4 bytes) is
 * ever held back across chunks.
 */
class MboxrdQuoter {
  /** true while the current line so far is only '>' characters followed by `matched` bytes of "From ". */
  private candidate = true;
  private matched = 0;

  push(chunk: Buffer): Buffer {
    const parts: Buffer[] = [];
    let i = 0;
    let runStart = 0; // start of bytes to be copied through unchanged
    const n = chunk.length;
    while (i < n) {
      if (!this.candidate) {
        const lf = chunk.indexOf(LF, i);
        if (lf === -1) {
          i = n;
          break;
        }
        i = lf + 1;
        this.candidate = true;
        this.matched = 0;
        continue;
      }
      const b = chunk[i]!;
      if (this.matched === 0 && b === GT) {
        i++;
        continue;
      }
      if (b === FROM_[this.matched]) {
        // Hold the partial "From " back: flush what precedes it first.
        if (this.matched === 0) {
          if (i > runStart) parts.push(chunk.subarray(runStart, i));
        }
        this.matched++;
        i++;
        runStart = i;
        if (this.matched === FROM_.length) {
          parts.push(GT_FROM_);
          this.matched = 0;
          this.candidate = false;
        }
        continue;
      }
      // Mismatch: release the held-back partial "From " (if any) and go on.
      if (this.matched > 0) {
        parts.push(FROM_.subarray(0, this.matched));
        this.matched = 0;
        runStart = i;
      }
      if (b === LF) {
        i++; // empty or '>'-only line ends: the next line is a candidate again
      } else {
        this.candidate = false;
        i++;
      }
    }
    // A partial "From " held back at the end of the chunk is not copied: runStart already points past it.
    if (n > runStart) parts.push(chunk.subarray(runStart, n));
    if (parts.length === 1) return parts[0]!;
    return Buffer.concat(parts);
  }

  end(): Buffer {
    const held = this.matched > 0 ? Buffer.from(FROM_.subarray(0, this.matched)) : Buffer.alloc(0);
    this.matched = 0;
    this.candidate = true;
    return held;
  }
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    if (bytesWritten <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    off += bytesWritten;
  }
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), 'utf8');
}

interface StreamStats {
  /** bytes written */
  size: number;
  /** LF bytes written */
  lines: number;
  /** last byte written, or -1 if nothing */
  lastByte: number;
}

/**
 * Streams prefix + message through the given transforms into `write`, one chunk at a
 * time (each write is awaited before the next chunk is read: backpressure, bounded memory).
 */
async function streamMessage(
  write: (b: Buffer) => Promise<void>,
  input: DeliveryInput,
  transforms: Array<{ push(b: Buffer): Buffer; end(): Buffer }>,
  stats: StreamStats,
): Promise<void> {
  const emit = async (buf: Buffer): Promise<void> => {
    let b = buf;
    for (const t of transforms) {
      if (b.length === 0) return;
      b = t.push(b);
    }
    await put(b);
  };
  const put = async (b: Buffer): Promise<void> => {
    if (b.length === 0) return;
    await write(b);
    stats.size += b.length;
    let p = -1;
    while ((p = b.indexOf(LF, p + 1)) !== -1) stats.lines++;
    stats.lastByte = b[b.length - 1]!;
  };
  await emit(input.prefix);
  const stream = input.open() as unknown as AsyncIterable<unknown>;
  for await (const chunk of stream) {
    await emit(toBuffer(chunk));
  }
  // Flush the transforms in order: what one releases at the end goes through the rest.
  for (let k = 0; k < transforms.length; k++) {
    let b = transforms[k]!.end();
    for (let j = k + 1; j < transforms.length && b.length > 0; j++) b = transforms[j]!.push(b);
    await put(b);
  }
}

const runningAsRoot = typeof process.getuid === 'function' && process.getuid() === 0;

function isRoot(): boolean {
  return runningAsRoot;
}

async function fchownIfRoot(fh: FileHandle, uid: number | null, gid: number | null): Promise<void> {
  if (!isRoot() || (uid === null && gid === null)) return;
  await fh.chown(uid ?? -1, gid ?? -1);
}

async function chownPathIfRoot(p: string, uid: number | null, gid: number | null): Promise<void> {
  if (!isRoot() || (uid === null && gid === null)) return;
  // Open the directory and fchown the descriptor (no window for a swapped-in symlink).
  const fh = await fsp.open(p, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
  try {
    await fh.chown(uid ?? -1, gid ?? -1);
  } finally {
    await fh.close();
  }
}

async function safeUnlink(p: string): Promise<void> {
  try {
    await fsp.unlink(p);
  } catch {
    /* already gone or not ours to worry about */
  }
}

// ---------------------------------------------------------------------------------
// Maildir
// ---------------------------------------------------------------------------------

let maildirCounter = 0;

let hostnameCache = { name: '', until: 0 };

/** The host name as a Maildir name part, looked up at most once a minute (not once a message). */
function encodedHostname(): string {
  const now = Date.now();
  if (now >= hostnameCache.until) {
    hostnameCache = { name: os.hostname().replace(/\//g, '\\057').replace(/:/g, '\\072'), until: now + 60_000 };
  }
  return hostnameCache.name;
}

/** `${seconds}.M${usec}P${pid}Q${counter}.${hostname}` (Dovecot's M/P and qmail's Q). */
function maildirBaseName(): string {
  const t = performance.timeOrigin + performance.now(); // ms, sub-ms precision
  const sec = Math.floor(t / 1000);
  const usec = Math.min(999999, Math.max(0, Math.floor((t - sec * 1000) * 1000)));
  maildirCounter = (maildirCounter + 1) % Number.MAX_SAFE_INTEGER;
  return `${sec}.M${usec}P${process.pid}Q${maildirCounter}.${encodedHostname()}`;
}

/** Creates dir and missing parents, mode 0700; every directory created is owned by uid/gid. */
async function ensureOwnedDirectory(dir: string, uid: number | null, gid: number | null): Promise<void> {
  const first = await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  if (first === undefined) return;
  // chown every directory this call created, from the first one down to dir.
  const created: string[] = [];
  for (let p = path.resolve(dir); ; p = path.dirname(p)) {
    created.push(p);
    if (p === path.resolve(first) || path.dirname(p) === p) break;
  }
  for (const p of created.reverse()) await chownPathIfRoot(p, uid, gid);
}

/** Creates maildir (and missing parents) plus tmp/new/cur, mode 0700, owned by uid/gid. */
async function ensureMaildir(maildir: string, uid: number | null, gid: number | null): Promise<void> {
  await ensureOwnedDirectory(maildir, uid, gid);
  for (const sub of ['tmp', 'new', 'cur']) {
    const p = path.join(maildir, sub);
    try {
      await fsp.mkdir(p, { mode: 0o700 });
    } catch (err) {
      if (errCode(err) === 'EEXIST') continue;
      throw err;
    }
    await chownPathIfRoot(p, uid, gid);
  }
  rememberMaildir(maildir);
}

/**
 * Maildirs known to exist (path -> until when we trust that), so a busy mailbox is
 * not checked with four mkdir calls per message. A Maildir removed meanwhile shows
 * itself as ENOENT when the message is written or moved, and is then made again.
 */
const knownMaildirs = new Map<string, number>();
const KNOWN_MAILDIR_MS = 60_000;
const KNOWN_MAILDIRS_MAX = 10_000;

function rememberMaildir(maildir: string): void {
  if (knownMaildirs.size >= KNOWN_MAILDIRS_MAX) knownMaildirs.clear();
  knownMaildirs.set(maildir, Date.now() + KNOWN_MAILDIR_MS);
}

function isKnownMaildir(maildir: string): boolean {
  const until = knownMaildirs.get(maildir);
  if (until === undefined) return false;
  if (Date.now() < until) return true;
  knownMaildirs.delete(maildir);
  return false;
}

async function prepareMaildir(maildir: string, input: DeliveryInput): Promise<void> {
  knownMaildirs.delete(maildir);
  try {
    await ensureMaildir(maildir, input.uid, input.gid);
  } catch (err) {
    throw toMailboxError(`cannot create maildir ${maildir}`, err);
  }
}

/** A message up to this size (as stored) is collected in memory and written with one write. */
export const MAILDIR_BUFFER_LIMIT = 256 * 1024;

/**
 * Delivers one message into a Maildir: write tmp/<unique> (O_EXCL, 0600), fsync, link
 * to new/<unique>,S=<size>,W=<vsize> and unlink the tmp name, fsync new/ (group-committed
 * with the other deliveries into the same new/ at that moment).
 * A message up to `bufferLimit` bytes is converted in memory and written with one
 * write; a bigger one is streamed to the tmp file as it is read.
 * Returns the final path and the stored size in bytes (LF line endings, see top of file).
 */
export async function deliverToMaildir(maildir: string, input: DeliveryInput,
  options: { bufferLimit?: number } = {}): Promise<{ path: string; size: number }> {
  if (!isKnownMaildir(maildir)) await prepareMaildir(maildir, input);
  const bufferLimit = options.bufferLimit ?? MAILDIR_BUFFER_LIMIT;

  const tmpDir = path.join(maildir, 'tmp');
  const newDir = path.join(maildir, 'new');

  // 1. The tmp file, with a name nobody else can be using: created once the message is
  // read (small) or outgrows memory (big).
  let base = '';
  let tmpPath = '';
  let fh: FileHandle | undefined;
  const createTmp = async (): Promise<FileHandle> => {
    for (let attempt = 0; ; attempt++) {
      base = maildirBaseName();
      tmpPath = path.join(tmpDir, base);
      try {
        fh = await fsp.open(tmpPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
        break;
      } catch (err) {
        const code = errCode(err);
        if (code === 'EEXIST' && attempt < 10) continue;
        // the Maildir we remembered is gone: make it again, once
        if (code === 'ENOENT' && attempt === 0) { await prepareMaildir(maildir, input); continue; }
        throw toMailboxError(`cannot create ${tmpPath}`, err);
      }
    }
    await fchownIfRoot(fh, input.uid, input.gid);
    return fh;
  };

  // 2. Collect (or stream), write, fsync, close.
  const stats: StreamStats = { size: 0, lines: 0, lastByte: -1 };
  let held: Buffer[] | null = [];
  let heldBytes = 0;
  const write = async (b: Buffer): Promise<void> => {
    if (held && heldBytes + b.length <= bufferLimit) {
      held.push(b);
      heldBytes += b.length;
      return;
    }
    if (held) {
      // too big for memory: stream from here on
      const first = Buffer.concat(held);
      held = null;
      await writeAll(fh ?? await createTmp(), first);
    }
    await writeAll(fh!, b);
  };
  try {
    try {
      await streamMessage(write, input, [new CrlfToLf()], stats);
      if (held) await writeAll(fh ?? await createTmp(), Buffer.concat(held));
      await fh!.sync();
    } finally {
      await fh?.close();
    }
  } catch (err) {
    if (fh) await safeUnlink(tmpPath);
    throw toMailboxError(`cannot write ${tmpPath || `a message into ${tmpDir}`}`, err);
  }

  // 3. Name it by its exact size and link it into new/, as the Maildir spec says: link()
  // never replaces an existing name (rename() would). Where the file system has no hard
  // links, rename() — our names are unique anyway (time, pid, counter, host; O_EXCL in tmp/).
  const vsize = stats.size + stats.lines; // size with CRLF line endings (Dovecot's W=)
  const finalPath = path.join(newDir, `${base},S=${stats.size},W=${vsize}`);
  const linkIntoNew = async (): Promise<void> => {
    try {
      await fsp.link(tmpPath, finalPath);
    } catch (err) {
      if (errCode(err) !== 'EPERM' && errCode(err) !== 'ENOTSUP' && errCode(err) !== 'EOPNOTSUPP') throw err;
      await fsp.rename(tmpPath, finalPath);
      return;
    }
    await safeUnlink(tmpPath);
  };
  try {
    try {
      await linkIntoNew();
    } catch (err) {
      // new/ went away with the Maildir we remembered: make it again, once
      if (errCode(err) !== 'ENOENT') throw err;
      await prepareMaildir(maildir, input);
      await linkIntoNew();
    }
  } catch (err) {
    await safeUnlink(tmpPath);
    throw toMailboxError(`cannot move message into ${newDir}`, err);
  }

  // 4. Make the directory entry durable. If that fails the delivery is reported as
  // failed, so withdraw the file to avoid a duplicate when the delivery is retried.
  try {
    await syncDirectory(newDir);
  } catch (err) {
    await safeUnlink(finalPath);
    throw toMailboxError(`cannot fsync ${newDir}`, err);
  }
  return { path: finalPath, size: stats.size };
}

// ---------------------------------------------------------------------------------
// mbox
// ---------------------------------------------------------------------------------

/*
 * Locking. Dovecot's default is mbox_write_locks = "dotlock fcntl" (and
 * mbox_read_locks = "fcntl": a reading Dovecot takes only an fcntl read lock, so a
 * dotlock alone would not stop it from reading a half-appended message); mutt and
 * Postfix's local(8) on Linux also use fcntl + dotlock. We take both, in Dovecot's
 * order: dotlock first, then fcntl.
 *
 * Node has no flock()/fcntl() locking in core, and we do not want a native addon.
 * The fcntl-compatible lock is taken as a Linux "open file description" lock
 * (F_OFD_SETLK, Linux >= 3.15). OFD locks conflict with classic POSIX fcntl() locks
 * (what Dovecot, mutt and Postfix use), but belong to the open file description
 * rather than to a process. So a short-lived helper that inherits our descriptor can
 * take the lock and exit, and the lock stays held on *our* descriptor until we close
 * it. The helper is perl, from perl-base, which is Essential on Debian (always
 * installed); it uses only core perl (no modules beyond Errno, also in perl-base).
 * One spawn per mbox delivery, nothing held around the append.
 * (flock(1) would be the same trick, but flock(2) locks do not conflict with fcntl
 * locks on Linux, so it would not protect against Dovecot or mutt.)
 *
 * struct flock is packed for LP64 Linux (short, short, pad, off_t, off_t, pid_t, pad),
 * so the fcntl lock is only attempted on 64-bit Linux architectures. Where it cannot be
 * taken (other platforms, no perl, kernel without OFD locks) delivery proceeds with the
 * dotlock alone, which Dovecot and mutt also honour when they use dotlocks, and the
 * result's `locks` field says which locks were held.
 */
const DEFAULT_LOCK_TIMEOUT_MS = 10_000;
const STALE_DOTLOCK_MS = 5 * 60 * 1000;
const DOTLOCK_TOUCH_MS = 30_000;
const OFD_ARCHES = new Set(['x64', 'arm64', 'riscv64', 'ppc64', 's390x', 'loong64']);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Dotlock {
  path: string;
  dev: number;
  ino: number;
  timer: NodeJS.Timeout;
}

async function acquireDotlock(mboxPath: string, deadline: number, uid: number | null, gid: number | null): Promise<Dotlock> {
  const lockPath = `${mboxPath}.lock`;
  let delay = 20;
  for (;;) {
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(lockPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
    } catch (err) {
      if (errCode(err) !== 'EEXIST') throw toMailboxError(`cannot create dotlock ${lockPath}`, err);
    }
    if (fh !== undefined) {
      try {
        await fchownIfRoot(fh, uid, gid);
        await writeAll(fh, Buffer.from(`${process.pid}\n`));
        const st = await fh.stat();
        const timer = setInterval(() => {
          const now = new Date();
          fsp.utimes(lockPath, now, now).catch(() => undefined);
        }, DOTLOCK_TOUCH_MS);
        timer.unref();
        return { path: lockPath, dev: st.dev, ino: st.ino, timer };
      } catch (err) {
        await safeUnlink(lockPath);
        throw toMailboxError(`cannot write dotlock ${lockPath}`, err);
      } finally {
        await fh.close().catch(() => undefined);
      }
    }

    // Somebody holds it. Stale?
    try {
      const st = await fsp.stat(lockPath);
      if (Date.now() - st.mtimeMs > STALE_DOTLOCK_MS) {
        // Re-check right before removing so we do not remove a lock that was just replaced.
        const again = await fsp.stat(lockPath);
        if (again.ino === st.ino && again.dev === st.dev && again.mtimeMs === st.mtimeMs) {
          await fsp.unlink(lockPath);
        }
        continue;
      }
    } catch (err) {
      if (errCode(err) === 'ENOENT') continue; // released meanwhile: try again now
      throw toMailboxError(`cannot check dotlock ${lockPath}`, err);
    }

    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new MailboxError(`mailbox ${mboxPath} is locked (timed out waiting for ${lockPath})`, true, { code: 'ETIMEDOUT' });
    }
    await sleep(Math.min(remaining, delay + Math.floor(Math.random() * delay)));
    delay = Math.min(delay * 2, 500);
  }
}

async function releaseDotlock(lock: Dotlock): Promise<void> {
  clearInterval(lock.timer);
  try {
    const st = await fsp.stat(lock.path);
    if (st.ino === lock.ino && st.dev === lock.dev) await fsp.unlink(lock.path);
  } catch {
    /* gone already (someone judged it stale): nothing to do */
  }
}

// Takes an OFD write lock on fd 3 (whole file), retrying every 50 ms up to $ARGV[0] times.
// Exit 0: locked; 3: timed out; 5: fcntl failed (errno name on stderr); 4: bad fd.
const OFD_LOCK_SCRIPT = `
my $lk = pack("s s x4 q q i x4", 1, 0, 0, 0, 0);
open(my $fh, ">>&=", 3) or exit 4;
my $tries = $ARGV[0];
for (;;) {
  fcntl($fh, 37, $lk) and exit 0;
  if ($!{EAGAIN} || $!{EACCES}) {
    exit 3 if --$tries <= 0;
    select(undef, undef, undef, 0.05);
    next;
  }
  my ($name) = grep { $!{$_} } keys %!;
  print STDERR ($name // ($! + 0)), "\\n";
  exit 5;
}
`;

let perlMissing = false;

/**
 * Takes the fcntl-compatible (OFD) write lock on fh. Returns false when this platform
 * cannot (then the dotlock alone protects the append); throws a temporary MailboxError
 * when the mailbox stays locked past the deadline.
 */
async function lockFcntl(fh: FileHandle, mboxPath: string, deadline: number): Promise<boolean> {
  if (perlMissing || process.platform !== 'linux' || !OFD_ARCHES.has(process.arch)) return false;
  const tries = Math.max(1, Math.ceil((deadline - Date.now()) / 50));
  const result = await new Promise<{ code: number | null; stderr: string; spawnError?: NodeJS.ErrnoException }>((resolve) => {
    let stderr = '';
    const child = spawn('perl', ['-e', OFD_LOCK_SCRIPT, String(tries)], {
      stdio: ['ignore', 'ignore', 'pipe', fh.fd],
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
    });
    // Safety net: the helper bounds itself, but never wait much past the deadline.
    const killer = setTimeout(() => child.kill('SIGKILL'), Math.max(0, deadline - Date.now()) + 5000);
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 1000) stderr += d.toString();
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(killer);
      resolve({ code: null, stderr, spawnError: err });
    });
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stderr });
    });
  });
  if (result.spawnError) {
    if (result.spawnError.code === 'ENOENT') {
      perlMissing = true;
      return false;
    }
    throw toMailboxError(`cannot lock ${mboxPath}`, result.spawnError);
  }
  switch (result.code) {
    case 0:
      return true;
    case 3:
      throw new MailboxError(`mailbox ${mboxPath} is locked (timed out waiting for fcntl lock)`, true, { code: 'ETIMEDOUT' });
    default: {
      const errno = result.stderr.trim();
      // EINVAL: kernel without OFD locks. Fall back to the dotlock alone.
      if (result.code === 5 && errno === 'EINVAL') return false;
      throw new MailboxError(`cannot fcntl-lock ${mboxPath}: ${errno || `helper exited with ${result.code}`}`, true, {
        code: /^E[A-Z]+$/.test(errno) ? errno : undefined,
      });
    }
  }
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** C asctime() format, local time as Postfix writes it: "Thu Nov 24 18:22:48 2026", "Sun Nov  6 08:49:37 1994". */
export function asctime(d: Date): string {
  const p2 = (n: number) => String(n).padStart(2, '0');
  return (
    `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ` +
    `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())} ${d.getFullYear()}`
  );
}

/** The From_ line's address must be one word: whitespace/controls (only possible in a quoted local part) become '_'. */
function fromLineSender(sender: string): string {
  if (sender === '') return 'MAILER-DAEMON';
  return sender.replace(/[\s\x00-\x1f\x7f]/g, '_');
}

/**
 * Appends one message to an mbox file (mboxrd: lines matching /^>*From / get one more
 * '>'), under dotlock + fcntl lock. The file is opened O_APPEND|O_CREAT (0600, chowned
 * to uid/gid if this call created it and we run as root), fsynced before the locks are
 * released, and truncated back to its original size if the append fails midway.
 */
export async function deliverToMbox(mboxPath: string, input: DeliveryInput, opts?: MboxOptions): Promise<MboxResult> {
  const deadline = Date.now() + (opts?.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS);
  const locks: MboxResult['locks'] = [];
  // A new user's home does not exist yet: the dotlock and the mbox go in it.
  try {
    await ensureOwnedDirectory(path.dirname(mboxPath), input.uid, input.gid);
  } catch (err) {
    throw toMailboxError(`cannot create directory ${path.dirname(mboxPath)}`, err);
  }
  const dotlock = await acquireDotlock(mboxPath, deadline, input.uid, input.gid);
  locks.push('dotlock');
  try {
    // Open (create if needed). Only a file we created is chowned: an existing mailbox keeps its owner.
    let fh: FileHandle;
    let created = false;
    try {
      try {
        fh = await fsp.open(mboxPath, fsConstants.O_RDWR | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
        created = true;
      } catch (err) {
        if (errCode(err) !== 'EEXIST') throw err;
        fh = await fsp.open(mboxPath, fsConstants.O_RDWR | fsConstants.O_APPEND | fsConstants.O_NONBLOCK);
      }
    } catch (err) {
      throw toMailboxError(`cannot open mailbox ${mboxPath}`, err);
    }

    try {
      let isFile: boolean;
      try {
        isFile = (await fh.stat()).isFile();
      } catch (err) {
        throw toMailboxError(`cannot stat ${mboxPath}`, err);
      }
      if (!isFile) throw new MailboxError(`mailbox ${mboxPath} is not a regular file`, false);
      if (created) {
        try {
          await fchownIfRoot(fh, input.uid, input.gid);
        } catch (err) {
          throw toMailboxError(`cannot chown ${mboxPath}`, err);
        }
      }

      if (opts?.fcntlLock !== false && (await lockFcntl(fh, mboxPath, deadline))) locks.push('fcntl');

      // Size under the lock: this is where we truncate back to on failure.
      let origSize: number;
      try {
        origSize = (await fh.stat()).size;
      } catch (err) {
        throw toMailboxError(`cannot stat ${mboxPath}`, err);
      }

      const stats: StreamStats = { size: 0, lines: 0, lastByte: -1 };
      try {
        let head = `From ${fromLineSender(input.sender)} ${asctime(input.arrival)}\n`;
        // A previous writer that left the file without a final newline would glue our
        // From_ line onto its last line: start on a fresh line.
        if (origSize > 0) {
          const last = Buffer.alloc(1);
          const { bytesRead } = await fh.read(last, 0, 1, origSize - 1);
          if (bytesRead === 1 && last[0] !== LF) head = `\n${head}`;
        }
        const headBuf = Buffer.from(head, 'utf8');
        await writeAll(fh, headBuf);
        const headSize = headBuf.length;

        const body: StreamStats = { size: 0, lines: 0, lastByte: -1 };
        await streamMessage((b) => writeAll(fh, b), input, [new CrlfToLf(), new MboxrdQuoter()], body);
        // The message ends with a newline, then one blank line separates it from the next From_.
        const tail = Buffer.from(body.lastByte === LF || body.size === 0 ? '\n' : '\n\n');
        await writeAll(fh, tail);
        stats.size = headSize + body.size + tail.length;
        await fh.sync();
      } catch (err) {
        // Leave the mailbox exactly as we found it.
        await fh.truncate(origSize).catch(() => undefined);
        await fh.sync().catch(() => undefined);
        throw toMailboxError(`cannot append to ${mboxPath}`, err);
      }
      return { size: stats.size, locks };
    } finally {
      await fh.close().catch(() => undefined); // releases the fcntl (OFD) lock
    }
  } finally {
    await releaseDotlock(dotlock);
  }
}
