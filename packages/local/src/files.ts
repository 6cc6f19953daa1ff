/**
 * File primitives local's mailbox writers share: files and directories that
 * get the mailbox owner's uid/gid (fchown on the open descriptor, only when
 * local runs as root) and an unlink that does not mind a file already gone
 * (whole writes: common's writeAllSync). Opens directories with O_NOFOLLOW to chown
 * them; never decides where a mailbox is.
 */
import { constants as fsConstants, fchownSync, promises as fsp, unlinkSync } from 'node:fs';
import * as path from 'node:path';

const runningAsRoot = typeof process.getuid === 'function' && process.getuid() === 0;

/** Gives an open file to uid/gid when local runs as root; otherwise new files stay local's own. In line, as the other per-message calls. */
export function fchownIfRoot(fd: number, uid: number | null, gid: number | null): void {
  if (!runningAsRoot || (uid === null && gid === null)) return;
  fchownSync(fd, uid ?? -1, gid ?? -1);
}

/** The same for a directory, by path. */
export async function chownPathIfRoot(p: string, uid: number | null, gid: number | null): Promise<void> {
  if (!runningAsRoot || (uid === null && gid === null)) return;
  // Open the directory and fchown the descriptor (no window for a swapped-in symlink).
  const fh = await fsp.open(p, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
  try {
    await fh.chown(uid ?? -1, gid ?? -1);
  } finally {
    await fh.close();
  }
}

/** Creates dir and missing parents, mode 0700; every directory created is owned by uid/gid. */
export async function ensureOwnedDirectory(dir: string, uid: number | null, gid: number | null): Promise<void> {
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

/** In line: an unlink costs microseconds, a trip through the thread pool more. */
export function safeUnlink(p: string): void {
  try {
    unlinkSync(p);
  } catch {
    /* already gone or not ours to worry about */
  }
}
