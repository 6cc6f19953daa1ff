/**
 * The per-message copy for several recipients: the LMTP stream can be read
 * only once, so a message for more than one recipient is written once to a
 * private file and each mailbox written from it.
 *
 * The copies live in local's own directory, `local/` in the spool, which
 * master creates owned by the mailbox account with mode 0700 (layout.ts): not
 * in the system temporary directory, which other accounts share and which
 * may be small or private to another unit. A copy is named `<pid>.<n>`,
 * created O_EXCL (0600), and removed when the delivery is done; at start,
 * local removes what a crashed local left (a copy whose process no longer
 * runs, or anything else in the directory). Never touches a mailbox or the queue.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { smtpError } from '@postern/common';
import { errCode } from './errors.js';

/** local's directory in the spool (queue_directory), a row of layout.ts's SPOOL_DIRS. */
export const COPY_DIRECTORY = 'local';

export interface MessageCopy {
  /** A fresh stream of the copy. */
  open(): NodeJS.ReadableStream;
  remove(): Promise<void>;
}

const COPY_NAME = /^(\d+)\.\d+$/;

/** Whether a process runs: EPERM means it does, under another account. */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errCode(e) === 'EPERM';
  }
}

export class MessageCopies {
  private counter = 0;

  constructor(readonly dir: string) {}

  /**
   * Removes what crashed local processes left; returns the names removed.
   * A copy of another local that still runs (process_limit above 1) is kept;
   * one with our own pid is a dead process's whose pid we got again.
   * Synchronous: it runs once, while local starts, so no copy of ours exists yet
   * and start() returns before master's first message arrives.
   */
  removeLeftovers(): string[] {
    const removed: string[] = [];
    for (const name of fs.readdirSync(this.dir)) {
      const m = COPY_NAME.exec(name);
      const pid = m ? Number(m[1]) : 0;
      if (pid !== 0 && pid !== process.pid && running(pid)) continue;
      fs.rmSync(path.join(this.dir, name), { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  }

  /** Writes the message to a new copy; a failure is the 451 4.3.0 every recipient gets. */
  async copy(stream: NodeJS.ReadableStream): Promise<MessageCopy> {
    const failed = (e: unknown) => smtpError(451, '4.3.0', `cannot copy the message for its recipients: ${(e as Error).message}`);
    const { fh, file } = await this.create().catch((e) => { throw failed(e); });
    try {
      await pipeline(stream, fh.createWriteStream());
    } catch (e) {
      await fsp.rm(file, { force: true });
      throw failed(e);
    }
    return {
      open: () => fs.createReadStream(file),
      remove: () => fsp.rm(file, { force: true }),
    };
  }

  /** Opens a new `<pid>.<n>`; a name taken (a left-over not yet removed) is skipped, a few times at most. */
  private async create(): Promise<{ fh: fsp.FileHandle; file: string }> {
    const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
    for (let attempt = 0; ; attempt++) {
      this.counter = (this.counter + 1) % Number.MAX_SAFE_INTEGER;
      const file = path.join(this.dir, `${process.pid}.${this.counter}`);
      try {
        return { fh: await fsp.open(file, flags, 0o600), file };
      } catch (e) {
        if (errCode(e) !== 'EEXIST' || attempt >= 10) throw e;
      }
    }
  }
}
