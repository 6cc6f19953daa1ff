/**
 * Group commit for directory fsyncs. Making a new directory entry durable
 * (cleanup's rename into incoming/, local's link into a Maildir's new/) needs
 * an fsync of the directory; one fsync covers every entry made before it
 * started, so callers that arrive while one runs share the next one instead of
 * each paying for their own.
 */
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

interface Waiters { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void }

/**
 * Runs `flush` for many callers at once. A caller's request is satisfied only
 * by a flush that STARTS after the request was made (what the caller did
 * before asking is then covered); a request made while a flush runs waits for
 * the next one, which starts as soon as the running one ends and serves every
 * request that arrived meanwhile.
 */
export class GroupCommit {
  private running = false;
  private next: Waiters | null = null;

  constructor(private readonly flush: () => Promise<void>, private readonly onIdle?: () => void) {}

  /** Resolves once a flush that started after this call has completed; rejects with that flush's error. */
  request(): Promise<void> {
    if (!this.next) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
      this.next = { promise, resolve, reject };
    }
    const { promise } = this.next;
    if (!this.running) this.startFlush();
    return promise;
  }

  /** No flush running and none waiting. */
  get idle(): boolean { return !this.running && !this.next; }

  private startFlush(): void {
    const waiters = this.next!;
    this.next = null;
    this.running = true;
    let flushed: Promise<void>;
    try { flushed = this.flush(); } catch (e) { flushed = Promise.reject(e); }
    // the next flush (for requests made during this one) starts before this one's waiters go on
    const ended = () => {
      this.running = false;
      if (this.next) this.startFlush();
      else this.onIdle?.();
    };
    flushed.then(() => { ended(); waiters.resolve(); }, (e) => { ended(); waiters.reject(e); });
  }
}

export interface DirectorySyncOptions {
  /**
   * Keep the directory open between fsyncs, closing it after this many idle ms
   * (0: open it for each fsync). Only for a directory that is never replaced
   * while the process runs (the spool's queue directories): a kept descriptor
   * would go on syncing a removed directory, not the new one at the same path.
   */
  keepOpenMs?: number;
}

/** fsync of one directory, group-committed. */
export class DirectorySync {
  private fh: fsp.FileHandle | null = null;
  private closeTimer: NodeJS.Timeout | null = null;
  private readonly commit: GroupCommit;
  private readonly keepOpenMs: number;

  constructor(readonly dir: string, options: DirectorySyncOptions = {}, onIdle?: () => void) {
    this.keepOpenMs = options.keepOpenMs ?? 0;
    this.commit = new GroupCommit(() => this.fsyncNow(), () => {
      if (this.fh) {
        this.closeTimer = setTimeout(() => { this.closeTimer = null; void this.closeNow().then(() => { if (this.idle) onIdle?.(); }); }, this.keepOpenMs);
        this.closeTimer.unref();
      } else onIdle?.();
    });
  }

  /** Resolves once an fsync of the directory that started after this call has completed. */
  sync(): Promise<void> {
    if (this.closeTimer) { clearTimeout(this.closeTimer); this.closeTimer = null; }
    return this.commit.request();
  }

  get idle(): boolean { return this.commit.idle && !this.fh; }

  private async fsyncNow(): Promise<void> {
    try {
      if (this.keepOpenMs <= 0) {
        const fh = await openDirectory(this.dir);
        try { await fh.sync(); } finally { await fh.close(); }
        return;
      }
      if (!this.fh) this.fh = await openDirectory(this.dir);
      await this.fh.sync();
    } catch (e) {
      // reopen for the next round: never go on with a descriptor whose fsync failed
      await this.closeNow();
      const err = e as NodeJS.ErrnoException;
      throw Object.assign(new Error(`fsync of directory ${this.dir} failed: ${err.message}`), { code: err.code });
    }
  }

  private async closeNow(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(() => undefined);
  }
}

function openDirectory(dir: string): Promise<fsp.FileHandle> {
  return fsp.open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
}

const shared = new Map<string, DirectorySync>();

/**
 * fsync `dir`, group-committed with every other caller in this process that
 * syncs the same directory. Resolves once an fsync that started after this
 * call has completed.
 */
export function syncDirectory(dir: string, options: DirectorySyncOptions = {}): Promise<void> {
  const key = path.resolve(dir);
  let ds = shared.get(key);
  if (!ds) {
    // forgotten once idle, so syncing many directories (one per mailbox) keeps nothing around
    const created: DirectorySync = new DirectorySync(key, options, () => { if (shared.get(key) === created && created.idle) shared.delete(key); });
    ds = created;
    shared.set(key, ds);
  }
  return ds.sync();
}
