/** Files that must survive a crash whole: configuration tables, keys. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

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
