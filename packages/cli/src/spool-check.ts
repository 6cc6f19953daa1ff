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
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import {
  MainConfig, Spool, QueueName, ServiceAccounts, isQueueId, readQueueFile, CorruptQueueFile, serviceAccounts, prepareSpool,
} from '@postern/common';

/** A temporary file older than this is abandoned (smtpd_timeout is minutes). */
export const STALE_TEMP_MS = 60 * 60 * 1000;

const QUEUE_FILE_MODE = 0o640;

export async function checkSpool(config: MainConfig, spool: Spool, running: boolean): Promise<string[]> {
  const actions: string[] = [];
  const accounts = serviceAccounts(config);
  for (const c of prepareSpool(spool, accounts)) actions.push(`fixed ${c}`);
  const rel = (p: string) => path.relative(spool.root, p);

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
      await fsp.mkdir(path.dirname(home), { recursive: true, mode: 0o750 });
      try { await fsp.rename(file, home); } catch { return; }
      actions.push(`moved ${rel(file)} to ${rel(home)}: the place its id says`);
      if (accounts.privileged) prepareSpool(spool, accounts); // a new hash directory gets its owner
      file = home;
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
      if (queue === 'deferred' && st.isDirectory() && /^[0-9A-F]$/.test(name)) {
        for (const inner of await fsp.readdir(p).catch(() => [] as string[])) {
          const f = path.join(p, inner);
          const ist = await fsp.lstat(f).catch(() => null);
          if (!ist) continue;
          if (!ist.isFile() || !isQueueId(inner)) await toCorrupt(f, ist.isFile() ? 'not a queue file name' : 'not a regular file');
          else await checkFile(f, inner, spool.pathOf('deferred', inner));
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

function fixFileAccess(file: string, a: ServiceAccounts, actions: string[], rel: (p: string) => string): void {
  let st: fs.Stats;
  try { st = fs.lstatSync(file); } catch { return; }
  try {
    if (a.privileged && (st.uid !== a.owner.uid || st.gid !== a.relay.gid)) {
      fs.chownSync(file, a.owner.uid, a.relay.gid);
      actions.push(`fixed owner of ${rel(file)} (was ${st.uid}:${st.gid})`);
    }
    if ((st.mode & 0o7777) !== QUEUE_FILE_MODE) {
      fs.chmodSync(file, QUEUE_FILE_MODE);
      actions.push(`fixed mode of ${rel(file)} (was ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`);
    }
  } catch (e) {
    actions.push(`could not fix ${rel(file)}: ${(e as Error).message}`);
  }
}
