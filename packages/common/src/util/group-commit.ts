/**
 * Group commit for directory fsyncs. Making a new directory entry durable
 * (cleanup's rename into incoming/, local's link into a Maildir's new/) needs
 * an fsync of the directory; one fsync covers every entry made before it
 * started, so callers that arrive while one runs share the next one instead of
 * each paying for their own.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fsyncDescriptor } from './files.js';

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
  private fd: number | null = null;
  private closeTimer: NodeJS.Timeout | null = null;
  private readonly commit: GroupCommit;
  private readonly keepOpenMs: number;

  constructor(readonly dir: string, options: DirectorySyncOptions = {}, onIdle?: () => void) {
    this.keepOpenMs = options.keepOpenMs ?? 0;
    this.commit = new GroupCommit(() => this.fsyncNow(), () => {
      if (this.fd !== null) {
        this.closeTimer = setTimeout(() => { this.closeTimer = null; this.closeNow(); if (this.idle) onIdle?.(); }, this.keepOpenMs);
        this.closeTimer.unref();
      } else onIdle?.();
    });
  }

  /** Resolves once an fsync of the directory that started after this call has completed. */
  sync(): Promise<void> {
    if (this.closeTimer) { clearTimeout(this.closeTimer); this.closeTimer = null; }
    return this.commit.request();
  }

  get idle(): boolean { return this.commit.idle && this.fd === null; }

  private async fsyncNow(): Promise<void> {
    try {
      // open and close in line, only the fsync in the thread pool (files.ts, fsyncDescriptor)
      if (this.keepOpenMs <= 0) return await fsyncDir(this.dir);
      if (this.fd === null) this.fd = openDirectory(this.dir);
      await fsyncDescriptor(this.fd);
    } catch (e) {
      // reopen for the next round: never go on with a descriptor whose fsync failed
      this.closeNow();
      const err = e as NodeJS.ErrnoException;
      throw Object.assign(new Error(`fsync of directory ${this.dir} failed: ${err.message}`), { code: err.code });
    }
  }

  private closeNow(): void {
    const fd = this.fd;
    this.fd = null;
    if (fd !== null) try { fs.closeSync(fd); } catch { /* nothing to keep */ }
  }
}

function openDirectory(dir: string): number {
  return fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
}

/** One fsync of a directory, not grouped with anyone's (moves an administrator orders, sendmail, pickup). */
export async function fsyncDir(dir: string): Promise<void> {
  const fd = openDirectory(dir);
  try { await fsyncDescriptor(fd); } finally { fs.closeSync(fd); }
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
