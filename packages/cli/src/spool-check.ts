/**
 * `postern queue check` (postsuper -s): put the spool right and say what was done.
 *
 * - directories: created if missing, owners and modes as layout.ts says;
 * - queue files: owner mail_owner, group relay_user's group (smtp reads the
 *   message it delivers), mode 0640;
 * - stale temporary files (`incoming/.ID` untouched for an hour: cleanup gave up
 *   on them) removed;
 * - files in the wrong place (deferred/ outside its hash directory, or in
 *   another hash directory than the id says) moved where qmgr looks for them;
 * - whatever is not a queue file (unreadable, corrupt, named after another id,
 *   a bad name, a symbolic link) moved to corrupt/.
 *
 * While the mail system runs, active/ belongs to qmgr and is left alone; in the
 * other queues a file moved by qmgr meanwhile is simply skipped (rename fails).
 *
 * This runs as root in a spool the queue owner can write, so it never follows
 * a link: a file's owner and mode are changed through a descriptor opened with
 * O_NOFOLLOW, only for a regular file with one link; and a deferred/ hash
 * directory is opened once (O_NOFOLLOW|O_DIRECTORY) and everything in it is
 * reached through that descriptor (/proc/self/fd/N/NAME), so swapping the
 * directory for a link meanwhile leads nowhere else.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import {
  MainConfig, Spool, QueueName, ServiceAccounts, isQueueId, readQueueFile, CorruptQueueFile, serviceAccounts, prepareSpool, HASH_DIR_NAME, openDirNoFollow,
} from '@postern/common';

/** A temporary file older than this is abandoned (smtpd_timeout is minutes). */
export const STALE_TEMP_MS = 60 * 60 * 1000;

const QUEUE_FILE_MODE = 0o640;

export async function checkSpool(config: MainConfig, spool: Spool, running: boolean): Promise<string[]> {
  const actions: string[] = [];
  const accounts = serviceAccounts(config);
  for (const c of prepareSpool(spool, accounts)) actions.push(c.startsWith('left ') ? c : `fixed ${c}`);
  /** Open hash directories: /proc/self/fd/N stands for the directory it was opened as. */
  const opened = new Map<string, string>();
  const rel = (p: string) => {
    for (const [alias, real] of opened) if (p === alias || p.startsWith(`${alias}/`)) p = real + p.slice(alias.length);
    return path.relative(spool.root, p);
  };
  /** deferred/H opened without following a link; null (and reported) when it is not a directory. */
  const openHashDir = (dir: string): { fd: number; alias: string } | null => {
    let fd: ReturnType<typeof openDirNoFollow>;
    try { fd = openDirNoFollow(dir); } catch { return null; } // unreadable: nothing to check in it
    if (fd === 'not a directory') actions.push(`left ${rel(dir)} alone: not a directory (a link is never followed); remove it by hand`);
    if (typeof fd !== 'number') return null;
    const alias = `/proc/self/fd/${fd}`;
    opened.set(alias, dir);
    return { fd, alias };
  };
  const closeHashDir = (h: { fd: number; alias: string }) => { opened.delete(h.alias); fs.closeSync(h.fd); };

  const toCorrupt = async (file: string, why: string): Promise<void> => {
    let dst = path.join(spool.dir('corrupt'), path.basename(file));
    for (let n = 1; fs.existsSync(dst) && n < 1000; n++) dst = path.join(spool.dir('corrupt'), `${path.basename(file)}.${n}`);
    try {
      await fsp.rename(file, dst);
      actions.push(`moved ${rel(file)} to ${rel(dst)}: ${why}`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') actions.push(`could not move ${rel(file)} to corrupt/: ${(e as Error).message}`);
    }
  };

  /** A regular file named `id` found at `file`, which belongs at `home`. */
  const checkFile = async (file: string, id: string, home: string): Promise<void> => {
    if (file !== home) {
      if (fs.existsSync(home)) return toCorrupt(file, `a second copy of ${id} (${rel(home)} exists)`);
      await fsp.mkdir(path.dirname(home), { mode: 0o750 }).catch(() => undefined);
      if (accounts.privileged) prepareSpool(spool, accounts); // a new hash directory gets its owner
      const h = openHashDir(path.dirname(home));
      if (!h) return;
      try {
        try { await fsp.rename(file, path.join(h.alias, id)); } catch { return; }
        actions.push(`moved ${rel(file)} to ${rel(home)}: the place its id says`);
        return await checkFile(path.join(h.alias, id), id, path.join(h.alias, id));
      } finally {
        closeHashDir(h);
      }
    }
    try {
      const info = await readQueueFile(file);
      if (info.envelope.id !== id) return toCorrupt(file, `it names queue id ${info.envelope.id}`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // qmgr moved it meanwhile
      return toCorrupt(file, e instanceof CorruptQueueFile ? e.message.replace(/^.*corrupt queue file: /, 'corrupt queue file: ') : (e as Error).message);
    }
    fixFileAccess(file, accounts, actions, rel);
  };

  const queues: QueueName[] = running ? ['incoming', 'deferred', 'hold'] : ['incoming', 'active', 'deferred', 'hold'];
  for (const queue of queues) {
    const dir = spool.dir(queue);
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      const p = path.join(dir, name);
      const st = await fsp.lstat(p).catch(() => null);
      if (!st) continue;
      if (queue === 'deferred' && st.isDirectory() && HASH_DIR_NAME.test(name)) {
        const h = openHashDir(p);
        if (!h) continue;
        try {
          for (const inner of await fsp.readdir(h.alias).catch(() => [] as string[])) {
            const f = path.join(h.alias, inner);
            const ist = await fsp.lstat(f).catch(() => null);
            if (!ist) continue;
            if (!ist.isFile() || !isQueueId(inner)) await toCorrupt(f, ist.isFile() ? 'not a queue file name' : 'not a regular file');
            else await checkFile(f, inner, spool.pathOf('deferred', inner) === path.join(p, inner) ? f : spool.pathOf('deferred', inner));
          }
        } finally {
          closeHashDir(h);
        }
        continue;
      }
      if (queue === 'incoming' && name.startsWith('.') && isQueueId(name.slice(1)) && st.isFile()) {
        if (Date.now() - st.mtimeMs > STALE_TEMP_MS) {
          await fsp.unlink(p).catch(() => undefined);
          actions.push(`removed ${rel(p)}: a temporary file abandoned ${Math.round((Date.now() - st.mtimeMs) / 60000)} minutes ago`);
        }
        continue;
      }
      if (st.isDirectory()) { actions.push(`left ${rel(p)} alone: a directory that does not belong in ${queue}/; remove it by hand`); continue; }
      if (!st.isFile()) { await toCorrupt(p, 'not a regular file'); continue; }
      if (!isQueueId(name)) { await toCorrupt(p, 'not a queue file name'); continue; }
      await checkFile(p, name, spool.pathOf(queue, name));
    }
  }
  for (const name of await fsp.readdir(spool.dir('corrupt')).catch(() => [] as string[])) {
    const p = path.join(spool.dir('corrupt'), name);
    const st = await fsp.lstat(p).catch(() => null);
    if (st?.isFile()) fixFileAccess(p, accounts, actions, rel);
  }
  return actions;
}

/**
 * Owner and mode of a queue file, through a descriptor opened with O_NOFOLLOW:
 * a symbolic link is never followed, and a file with more than one link (a
 * hard link to a file elsewhere, made by whoever can write the spool) is left
 * alone, since changing it would change that other file.
 */
function fixFileAccess(file: string, a: ServiceAccounts, actions: string[], rel: (p: string) => string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') actions.push(`left ${rel(file)} alone: a symbolic link`);
    else if (code !== 'ENOENT') actions.push(`could not fix ${rel(file)}: ${(e as Error).message}`);
    return;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) { actions.push(`left ${rel(file)} alone: not a regular file`); return; }
    if (st.nlink !== 1) { actions.push(`left ${rel(file)} alone: it has ${st.nlink} links (a hard link to a file elsewhere?); remove it by hand`); return; }
    if (a.privileged && (st.uid !== a.owner.uid || st.gid !== a.relay.gid)) {
      fs.fchownSync(fd, a.owner.uid, a.relay.gid);
      actions.push(`fixed owner of ${rel(file)} (was ${st.uid}:${st.gid})`);
    }
    if ((st.mode & 0o7777) !== QUEUE_FILE_MODE) {
      fs.fchmodSync(fd, QUEUE_FILE_MODE);
      actions.push(`fixed mode of ${rel(file)} (was ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`);
    }
  } catch (e) {
    actions.push(`could not fix ${rel(file)}: ${(e as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
}
