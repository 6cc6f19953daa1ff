/**
 * mbox delivery: appends one mboxrd message (`From sender asctime-date` line,
 * LF line endings, `>` added to lines matching /^>*From /, a blank line after)
 * under the dotlock and the fcntl lock (mbox-lock.ts). The append is fsynced
 * before the locks are released and cut back to the old size if it fails, so
 * the mailbox is never left with half a message. Touches only the mbox file,
 * its dotlock and, for a new user, the directory they live in.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { writeAllSync } from '@postern/common';
import { MailboxError, errCode, toMailboxError } from './errors.js';
import { ensureOwnedDirectory, fchownIfRoot } from './files.js';
import { CrlfToLf, LF, MboxrdQuoter } from './line-endings.js';
import { acquireDotlock, lockFcntl, releaseDotlock } from './mbox-lock.js';
import { emptyStats, streamMessage, type DeliveryInput } from './message-stream.js';

export interface MboxOptions {
  /** Total time to wait for the dotlock and the fcntl lock together. Default 10000 ms. */
  lockTimeoutMs?: number;
  /**
   * Take an fcntl-compatible lock in addition to the dotlock (`lockFcntl`, mbox-lock.ts).
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

const DEFAULT_LOCK_TIMEOUT_MS = 10_000;

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
          fchownIfRoot(fh.fd, input.uid, input.gid);
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

      const stats = emptyStats();
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
        writeAllSync(fh.fd, headBuf, null, mboxPath);
        const headSize = headBuf.length;

        const body = emptyStats();
        await streamMessage(async (b) => writeAllSync(fh.fd, b, null, mboxPath), input, [new CrlfToLf(), new MboxrdQuoter()], body);
        // The message ends with a newline, then one blank line separates it from the next From_.
        const tail = Buffer.from(body.lastByte === LF || body.size === 0 ? '\n' : '\n\n');
        writeAllSync(fh.fd, tail, null, mboxPath);
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
