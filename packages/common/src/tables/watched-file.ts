/**
 * A table file kept in memory and re-read when it changes (device, inode, size,
 * mtime or ctime), checked at most once per `minCheckIntervalMs`. The file
 * backends (texthash, passwd-file) share it. An unreadable or malformed file
 * makes every read throw TableUnavailable until it is fixed: callers fail
 * temporarily rather than act on a half-edited table, as Postfix does.
 */
import * as fs from 'node:fs';
import { TableUnavailable } from './types.js';

export interface WatchedFileOptions<T> {
  minCheckIntervalMs?: number;
  /** The value for a missing file; without it a missing file is unavailable. */
  missing?: () => T;
  /** Prefix for a read error (`texthash:/etc/x: cannot read`); the parse errors carry their own file:line. */
  readError?: string;
}

export class WatchedFile<T> {
  private value: T | undefined;
  private signature: string | undefined;
  private error: Error | undefined;
  private lastCheck = -Infinity;
  private readonly minCheckIntervalMs: number;

  constructor(
    readonly file: string,
    private readonly parse: (text: string, file: string) => T,
    private readonly opts: WatchedFileOptions<T> = {},
  ) {
    this.minCheckIntervalMs = opts.minCheckIntervalMs ?? 1000;
  }

  /** The parsed file as it is now (within the check interval); throws TableUnavailable. */
  get(): T {
    // Monotonic clock: a wall-clock step must not stop reloads.
    const now = performance.now();
    if (now - this.lastCheck >= this.minCheckIntervalMs) {
      this.lastCheck = now;
      try {
        this.reload();
      } catch (err) {
        // e.g. EACCES: keep failing (not serving a stale table) until a reload succeeds.
        this.signature = undefined;
        this.error = new TableUnavailable(this.opts.readError ? `${this.opts.readError}: ${(err as Error).message}` : (err as Error).message);
      }
    }
    if (this.error) throw this.error;
    return this.value as T;
  }

  private reload(): void {
    let fd: number;
    try {
      fd = fs.openSync(this.file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !this.opts.missing) throw err;
      this.install('missing', this.opts.missing());
      return;
    }
    try {
      // fstat + read on one descriptor: the signature belongs to the bytes we parse.
      const st = fs.fstatSync(fd);
      const sig = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
      if (sig === this.signature) return;
      const text = fs.readFileSync(fd, 'utf8');
      try {
        this.install(sig, this.parse(text, this.file));
      } catch (err) {
        this.signature = sig; // don't re-parse the same broken file every check
        this.error = err instanceof TableUnavailable ? err : new TableUnavailable((err as Error).message);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  private install(sig: string, value: T): void {
    this.signature = sig;
    this.error = undefined;
    this.value = value;
  }
}
