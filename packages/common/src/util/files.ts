/** Files that must survive a crash whole: configuration tables, keys. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

/**
 * fsync of an open descriptor, off the event loop (milliseconds on a real disk).
 * The message path makes its other file calls (open, write, close, rename, link,
 * unlink) in line: on a local file system they cost microseconds, a trip through
 * libuv's thread pool several times that in CPU (bench/README.md, "File calls in
 * line"); only the waits for the disk go to the pool.
 */
export const fsyncDescriptor: (fd: number) => Promise<void> = promisify(fs.fsync);

/** Write all of buf at `position` (or the file position when null), or throw: a write of 0 bytes is EIO. */
export function writeAllSync(fd: number, buf: Buffer, position: number | null = null, what = 'a file'): void {
  let off = 0;
  while (off < buf.length) {
    const n = fs.writeSync(fd, buf, off, buf.length - off, position === null ? null : position + off);
    if (n <= 0) throw Object.assign(new Error(`short write to ${what}`), { code: 'EIO' });
    off += n;
  }
}

/**
 * Replace `file` so a crash leaves the old or the new version, never a mix:
 * a temp file in the same directory, fsync, rename over, fsync the directory.
 */
export function replaceFileDurably(file: string, data: string | Buffer, mode: number, owner?: { uid: number; gid: number },
  /** Last say over the new file's access (owner, mode, ACL), on its descriptor before it takes the name. */
  secure?: (fd: number) => void): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'wx', 0o600); // O_EXCL: never through a planted symlink
  try {
    try {
      if (owner) fs.fchownSync(fd, owner.uid, owner.gid);
      fs.fchmodSync(fd, mode);
      secure?.(fd);
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  const dfd = fs.openSync(dir, 'r');
  try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
}

/**
 * Open a directory without following a link (O_NOFOLLOW|O_DIRECTORY; O_NONBLOCK
 * so a FIFO planted in its place cannot hang the open): the descriptor, or
 * what is there instead. Root changes a directory that service accounts can
 * write into (the spool, the mailbox root) only through such a descriptor, so a
 * `deferred/7 -> /etc` they plant is reported and left alone, never followed.
 */
export function openDirNoFollow(dir: string): number | 'not a directory' | 'missing' {
  try {
    return fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_DIRECTORY | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR') return 'not a directory';
    if (code === 'ENOENT') return 'missing';
    throw e;
  }
}
