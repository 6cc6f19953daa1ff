/**
 * Maildir delivery, per the Maildir spec: write tmp/<unique> (O_EXCL, 0600),
 * fsync, link to new/<unique>,S=<size>,W=<vsize>, unlink the tmp name, fsync
 * new/ (group-committed with the other deliveries into the same new/ at that
 * moment). Creates the Maildir (0700, the user's owner) when it is missing.
 * Touches only the Maildir it is given: never its cur/ messages, never a lock.
 */
import * as fs from 'node:fs';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fsyncDescriptor, syncDirectory, writeAllSync } from '@postern/common';
import { errCode, toMailboxError } from './errors.js';
import { chownPathIfRoot, ensureOwnedDirectory, fchownIfRoot, safeUnlink } from './files.js';
import { CrlfToLf } from './line-endings.js';
import { emptyStats, streamMessage, type DeliveryInput } from './message-stream.js';

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
 * Returns the final path and the stored size in bytes (LF line endings, see line-endings.ts).
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
  // the per-message calls are made in line, only the fsyncs go to the thread pool (common's fsyncDescriptor)
  let fd: number | undefined;
  const createTmp = async (): Promise<number> => {
    for (let attempt = 0; ; attempt++) {
      base = maildirBaseName();
      tmpPath = path.join(tmpDir, base);
      try {
        fd = fs.openSync(tmpPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
        break;
      } catch (err) {
        const code = errCode(err);
        if (code === 'EEXIST' && attempt < 10) continue;
        // the Maildir we remembered is gone: make it again, once
        if (code === 'ENOENT' && attempt === 0) { await prepareMaildir(maildir, input); continue; }
        throw toMailboxError(`cannot create ${tmpPath}`, err);
      }
    }
    fchownIfRoot(fd, input.uid, input.gid);
    return fd;
  };

  // 2. Collect (or stream), write, fsync, close.
  const stats = emptyStats();
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
      writeAllSync(fd ?? await createTmp(), first, null, tmpPath);
    }
    writeAllSync(fd!, b, null, tmpPath);
  };
  try {
    try {
      await streamMessage(write, input, [new CrlfToLf()], stats);
      if (held) writeAllSync(fd ?? await createTmp(), Buffer.concat(held), null, tmpPath);
      await fsyncDescriptor(fd!);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  } catch (err) {
    if (fd !== undefined) safeUnlink(tmpPath);
    throw toMailboxError(`cannot write ${tmpPath || `a message into ${tmpDir}`}`, err);
  }

  // 3. Name it by its exact size and link it into new/, as the Maildir spec says: link()
  // never replaces an existing name (rename() would). Where the file system has no hard
  // links, rename() — our names are unique anyway (time, pid, counter, host; O_EXCL in tmp/).
  const vsize = stats.size + stats.lines; // size with CRLF line endings (Dovecot's W=)
  const finalPath = path.join(newDir, `${base},S=${stats.size},W=${vsize}`);
  const linkIntoNew = async (): Promise<void> => {
    try {
      fs.linkSync(tmpPath, finalPath);
    } catch (err) {
      if (errCode(err) !== 'EPERM' && errCode(err) !== 'ENOTSUP' && errCode(err) !== 'EOPNOTSUPP') throw err;
      fs.renameSync(tmpPath, finalPath);
      return;
    }
    safeUnlink(tmpPath);
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
    safeUnlink(tmpPath);
    throw toMailboxError(`cannot move message into ${newDir}`, err);
  }

  // 4. Make the directory entry durable. If that fails the delivery is reported as
  // failed, so withdraw the file to avoid a duplicate when the delivery is retried.
  try {
    await syncDirectory(newDir);
  } catch (err) {
    safeUnlink(finalPath);
    throw toMailboxError(`cannot fsync ${newDir}`, err);
  }
  return { path: finalPath, size: stats.size };
}
