/**
 * mbox locking, as Dovecot and mutt expect: a dotlock (`<mbox>.lock`) and an
 * fcntl-compatible write lock on the open mailbox, both within one deadline.
 * Only takes and releases locks: never reads or writes the mailbox itself
 * (mbox.ts does, between the two).
 *
 * Dovecot's default is mbox_write_locks = "dotlock fcntl" (and
 * mbox_read_locks = "fcntl": a reading Dovecot takes only an fcntl read lock, so a
 * dotlock alone would not stop it from reading a half-appended message); mutt and
 * Postfix's local(8) on Linux also use fcntl + dotlock. We take both, in Dovecot's
 * order: dotlock first, then fcntl.
 *
 * Node has no flock()/fcntl() locking in core, and we do not want a native addon.
 * The fcntl-compatible lock is taken as a Linux "open file description" lock
 * (F_OFD_SETLK, Linux >= 3.15). OFD locks conflict with classic POSIX fcntl() locks
 * (what Dovecot, mutt and Postfix use), but belong to the open file description
 * rather than to a process. So a short-lived helper that inherits our descriptor can
 * take the lock and exit, and the lock stays held on *our* descriptor until we close
 * it. The helper is perl, from perl-base, which is Essential on Debian (always
 * installed); it uses only core perl (no modules beyond Errno, also in perl-base).
 * One spawn per mbox delivery, nothing held around the append.
 * (flock(1) would be the same trick, but flock(2) locks do not conflict with fcntl
 * locks on Linux, so it would not protect against Dovecot or mutt.)
 *
 * struct flock is packed for LP64 Linux (short, short, pad, off_t, off_t, pid_t, pad),
 * so the fcntl lock is only attempted on 64-bit Linux architectures. Where it cannot be
 * taken (other platforms, no perl, kernel without OFD locks) delivery proceeds with the
 * dotlock alone, which Dovecot and mutt also honour when they use dotlocks, and the
 * result's `locks` field says which locks were held.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { writeAllSync } from '@postern/common';
import { MailboxError, errCode, toMailboxError } from './errors.js';
import { fchownIfRoot, safeUnlink } from './files.js';

const STALE_DOTLOCK_MS = 5 * 60 * 1000;
const DOTLOCK_TOUCH_MS = 30_000;
const OFD_ARCHES = new Set(['x64', 'arm64', 'riscv64', 'ppc64', 's390x', 'loong64']);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A dotlock we hold: its identity, so we never remove a lock someone else has taken over. */
export interface Dotlock {
  path: string;
  dev: number;
  ino: number;
  timer: NodeJS.Timeout;
}

/** Creates `<mbox>.lock` (O_EXCL), waiting until the deadline; a lock untouched for 5 minutes is stale and removed. */
export async function acquireDotlock(mboxPath: string, deadline: number, uid: number | null, gid: number | null): Promise<Dotlock> {
  const lockPath = `${mboxPath}.lock`;
  let delay = 20;
  for (;;) {
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(lockPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
    } catch (err) {
      if (errCode(err) !== 'EEXIST') throw toMailboxError(`cannot create dotlock ${lockPath}`, err);
    }
    if (fh !== undefined) {
      try {
        fchownIfRoot(fh.fd, uid, gid);
        writeAllSync(fh.fd, Buffer.from(`${process.pid}\n`), null, lockPath);
        const st = await fh.stat();
        const timer = setInterval(() => {
          const now = new Date();
          fsp.utimes(lockPath, now, now).catch(() => undefined);
        }, DOTLOCK_TOUCH_MS);
        timer.unref();
        return { path: lockPath, dev: st.dev, ino: st.ino, timer };
      } catch (err) {
        safeUnlink(lockPath);
        throw toMailboxError(`cannot write dotlock ${lockPath}`, err);
      } finally {
        await fh.close().catch(() => undefined);
      }
    }

    // Somebody holds it. Stale?
    try {
      const st = await fsp.stat(lockPath);
      if (Date.now() - st.mtimeMs > STALE_DOTLOCK_MS) {
        // Re-check right before removing so we do not remove a lock that was just replaced.
        const again = await fsp.stat(lockPath);
        if (again.ino === st.ino && again.dev === st.dev && again.mtimeMs === st.mtimeMs) {
          await fsp.unlink(lockPath);
        }
        continue;
      }
    } catch (err) {
      if (errCode(err) === 'ENOENT') continue; // released meanwhile: try again now
      throw toMailboxError(`cannot check dotlock ${lockPath}`, err);
    }

    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new MailboxError(`mailbox ${mboxPath} is locked (timed out waiting for ${lockPath})`, true, { code: 'ETIMEDOUT' });
    }
    await sleep(Math.min(remaining, delay + Math.floor(Math.random() * delay)));
    delay = Math.min(delay * 2, 500);
  }
}

/** Removes the dotlock if it is still ours. */
export async function releaseDotlock(lock: Dotlock): Promise<void> {
  clearInterval(lock.timer);
  try {
    const st = await fsp.stat(lock.path);
    if (st.ino === lock.ino && st.dev === lock.dev) await fsp.unlink(lock.path);
  } catch {
    /* gone already (someone judged it stale): nothing to do */
  }
}

// Takes an OFD write lock on fd 3 (whole file), retrying every 50 ms up to $ARGV[0] times.
// Exit 0: locked; 3: timed out; 5: fcntl failed (errno name on stderr); 4: bad fd.
const OFD_LOCK_SCRIPT = `
my $lk = pack("s s x4 q q i x4", 1, 0, 0, 0, 0);
open(my $fh, ">>&=", 3) or exit 4;
my $tries = $ARGV[0];
for (;;) {
  fcntl($fh, 37, $lk) and exit 0;
  if ($!{EAGAIN} || $!{EACCES}) {
    exit 3 if --$tries <= 0;
    select(undef, undef, undef, 0.05);
    next;
  }
  my ($name) = grep { $!{$_} } keys %!;
  print STDERR ($name // ($! + 0)), "\\n";
  exit 5;
}
`;

let perlMissing = false;

/**
 * Takes the fcntl-compatible (OFD) write lock on fh. Returns false when this platform
 * cannot (then the dotlock alone protects the append); throws a temporary MailboxError
 * when the mailbox stays locked past the deadline.
 */
export async function lockFcntl(fh: FileHandle, mboxPath: string, deadline: number): Promise<boolean> {
  if (perlMissing || process.platform !== 'linux' || !OFD_ARCHES.has(process.arch)) return false;
  const tries = Math.max(1, Math.ceil((deadline - Date.now()) / 50));
  const result = await new Promise<{ code: number | null; stderr: string; spawnError?: NodeJS.ErrnoException }>((resolve) => {
    let stderr = '';
    const child = spawn('perl', ['-e', OFD_LOCK_SCRIPT, String(tries)], {
      stdio: ['ignore', 'ignore', 'pipe', fh.fd],
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
    });
    // Safety net: the helper bounds itself, but never wait much past the deadline.
    const killer = setTimeout(() => child.kill('SIGKILL'), Math.max(0, deadline - Date.now()) + 5000);
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 1000) stderr += d.toString();
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(killer);
      resolve({ code: null, stderr, spawnError: err });
    });
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stderr });
    });
  });
  if (result.spawnError) {
    if (result.spawnError.code === 'ENOENT') {
      perlMissing = true;
      return false;
    }
    throw toMailboxError(`cannot lock ${mboxPath}`, result.spawnError);
  }
  switch (result.code) {
    case 0:
      return true;
    case 3:
      throw new MailboxError(`mailbox ${mboxPath} is locked (timed out waiting for fcntl lock)`, true, { code: 'ETIMEDOUT' });
    default: {
      const errno = result.stderr.trim();
      // EINVAL: kernel without OFD locks. Fall back to the dotlock alone.
      if (result.code === 5 && errno === 'EINVAL') return false;
      throw new MailboxError(`cannot fcntl-lock ${mboxPath}: ${errno || `helper exited with ${result.code}`}`, true, {
        code: /^E[A-Z]+$/.test(errno) ? errno : undefined,
      });
    }
  }
}
