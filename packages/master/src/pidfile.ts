/** One master per spool: a pid file created exclusively, a stale one replaced. */
import * as fs from 'node:fs';

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

function isMaster(pid: number): boolean {
  try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('postern'); } catch { return alive(pid); }
}

export function readPid(file: string): number | null {
  try {
    const pid = parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
    return Number.isFinite(pid) && pid > 0 ? pid : null;
  } catch { return null; }
}

export function acquirePidFile(file: string): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = readPid(file);
      if (pid && pid !== process.pid && isMaster(pid)) throw new Error(`master is already running (pid ${pid}, ${file})`);
      fs.rmSync(file, { force: true }); // stale: its master is gone
    }
  }
  throw new Error(`cannot create ${file}`);
}

export function releasePidFile(file: string): void {
  if (readPid(file) === process.pid) fs.rmSync(file, { force: true });
}
