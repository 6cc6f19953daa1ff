/**
 * Who runs what, and who may touch which part of the spool. This is the
 * privilege separation of ARCHITECTURE.md in one place: master applies it at
 * every start, `postern init` and `postern queue check` apply it too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MainConfig } from './config.js';
import { Spool } from './spool.js';
import { isRoot, lookupSystemUser, lookupGroupName, SystemUser } from './system.js';

export interface ServiceAccounts {
  /** Queue owner: cleanup, qmgr, pickup. */
  owner: SystemUser;
  smtpd: SystemUser;
  relay: SystemUser;
  mailbox: SystemUser;
  /** False in a sandbox: everything runs as the invoking user and nothing is chowned. */
  privileged: boolean;
}

export class MissingAccountError extends Error {}

export function serviceAccounts(config: MainConfig): ServiceAccounts {
  if (!isRoot() || config.bool('unprivileged')) {
    const me = { name: process.env.USER || String(process.getuid!()), uid: process.getuid!(), gid: process.getgid!(), home: '' };
    return { owner: me, smtpd: me, relay: me, mailbox: me, privileged: false };
  }
  const get = (param: string): SystemUser => {
    const name = config.get(param);
    const u = lookupSystemUser(name);
    if (!u) throw new MissingAccountError(`user "${name}" (${param}) does not exist: create it with "postern init DIR --create-users" or by installing the package`);
    return u;
  };
  return { owner: get('mail_owner'), smtpd: get('smtpd_user'), relay: get('relay_user'), mailbox: get('mailbox_user'), privileged: true };
}

/** The account a master.cf command runs as by default. */
export function defaultAccount(command: string, a: ServiceAccounts): SystemUser {
  switch (command) {
    case 'smtpd': case 'anvil': return a.smtpd; // anvil needs no privileges; only smtpd talks to it
    case 'smtp': case 'lmtp': return a.relay;
    case 'local': return a.mailbox;
    default: return a.owner;
  }
}

/** Owner, group and mode of a service's Unix socket: the group is exactly its allowed clients. */
export function socketAccess(command: string, a: ServiceAccounts): { uid: number; gid: number; mode: number } {
  switch (command) {
    case 'cleanup': return { uid: a.owner.uid, gid: a.smtpd.gid, mode: 0o660 }; // smtpd and pickup write mail in
    case 'smtp': case 'lmtp': return { uid: a.relay.uid, gid: a.owner.gid, mode: 0o660 }; // qmgr asks for deliveries
    case 'local': return { uid: a.mailbox.uid, gid: a.relay.gid, mode: 0o660 }; // the lmtp client delivers
    case 'anvil': return { uid: a.smtpd.uid, gid: a.smtpd.gid, mode: 0o600 }; // smtpd's client counters
    case 'showq': return { uid: a.owner.uid, gid: a.owner.gid, mode: 0o666 }; // mailq for every local user
    case 'metrics': return { uid: 0, gid: 0, mode: 0o600 }; // only master (root) feeds it the log events
    default: return { uid: a.owner.uid, gid: a.owner.gid, mode: 0o600 }; // qmgr: cleanup and root
  }
}

interface DirSpec { rel: string; uid: (a: ServiceAccounts) => number; gid: (a: ServiceAccounts) => number; mode: number }

const root = () => 0;
/**
 * Queue directories carry the setgid bit with the relay group, so queue files
 * inherit a group that lets smtp read (never write) the message it delivers.
 */
const SPOOL_DIRS: DirSpec[] = [
  { rel: '.', uid: root, gid: root, mode: 0o755 },
  { rel: 'incoming', uid: (a) => a.owner.uid, gid: (a) => a.relay.gid, mode: 0o2750 },
  { rel: 'active', uid: (a) => a.owner.uid, gid: (a) => a.relay.gid, mode: 0o2750 },
  { rel: 'deferred', uid: (a) => a.owner.uid, gid: (a) => a.relay.gid, mode: 0o2750 },
  { rel: 'hold', uid: (a) => a.owner.uid, gid: (a) => a.owner.gid, mode: 0o700 },
  { rel: 'corrupt', uid: (a) => a.owner.uid, gid: (a) => a.owner.gid, mode: 0o700 },
  { rel: 'maildrop', uid: (a) => a.owner.uid, gid: (a) => a.owner.gid, mode: 0o1733 },
  { rel: 'private', uid: root, gid: root, mode: 0o755 },
  { rel: 'public', uid: root, gid: root, mode: 0o755 },
  { rel: 'pid', uid: root, gid: root, mode: 0o755 },
];

export interface SpoolDifference {
  path: string;
  /** What is wrong, e.g. `mode 0755, expected 02750`. */
  problem: string;
  /** A missing directory (master creates it at start) rather than a wrong one. */
  missing: boolean;
}

/** How the spool differs from the layout prepareSpool makes, changing nothing (`postern check`). */
export function spoolDifferences(spool: Spool, a: ServiceAccounts): SpoolDifference[] {
  const out: SpoolDifference[] = [];
  const octal = (m: number) => `0${m.toString(8)}`;
  const who = (uid: number, gid: number) => `${lookupSystemUser(uid)?.name ?? uid}:${lookupGroupName(gid) ?? gid}`;
  const compare = (dir: string, uid: number, gid: number, mode: number): void => {
    let st: fs.Stats;
    try { st = fs.lstatSync(dir); } catch {
      out.push({ path: dir, problem: 'missing', missing: true });
      return;
    }
    if (!st.isDirectory()) { out.push({ path: dir, problem: 'not a directory', missing: false }); return; }
    if (a.privileged && (st.uid !== uid || st.gid !== gid)) {
      out.push({ path: dir, problem: `owner ${who(st.uid, st.gid)}, expected ${who(uid, gid)}`, missing: false });
    }
    if ((st.mode & 0o7777) !== mode) out.push({ path: dir, problem: `mode ${octal(st.mode & 0o7777)}, expected ${octal(mode)}`, missing: false });
  };
  for (const d of SPOOL_DIRS) compare(path.join(spool.root, d.rel), d.uid(a), d.gid(a), d.mode);
  // as prepareSpool: deferred's hash directories are qmgr's own in a sandbox
  let hashDirs: string[] = [];
  if (a.privileged) try { hashDirs = fs.readdirSync(spool.dir('deferred')); } catch { /* reported above */ }
  for (const sub of hashDirs) {
    const dir = path.join(spool.dir('deferred'), sub);
    if (fs.lstatSync(dir).isDirectory()) compare(dir, a.owner.uid, a.relay.gid, 0o2750);
  }
  return out;
}

/** Create the spool and put every directory's owner and mode right; returns what it changed. */
export function prepareSpool(spool: Spool, a: ServiceAccounts): string[] {
  const changed: string[] = [];
  for (const d of SPOOL_DIRS) {
    const dir = path.join(spool.root, d.rel);
    if (!fs.existsSync(dir)) { fs.mkdirSync(dir, { recursive: true, mode: 0o700 }); changed.push(`created ${dir}`); }
    const st = fs.statSync(dir);
    if (a.privileged) {
      const [uid, gid] = [d.uid(a), d.gid(a)];
      if (st.uid !== uid || st.gid !== gid) { fs.chownSync(dir, uid, gid); changed.push(`owner of ${dir}`); }
    }
    if ((st.mode & 0o7777) !== d.mode) { fs.chmodSync(dir, d.mode); changed.push(`mode of ${dir}`); }
  }
  if (a.privileged) {
    // deferred's hash directories
    for (const sub of fs.readdirSync(spool.dir('deferred'))) {
      const dir = path.join(spool.dir('deferred'), sub);
      const st = fs.statSync(dir);
      if (st.uid !== a.owner.uid || st.gid !== a.relay.gid) { fs.chownSync(dir, a.owner.uid, a.relay.gid); changed.push(`owner of ${dir}`); }
      if ((st.mode & 0o7777) !== 0o2750) { fs.chmodSync(dir, 0o2750); changed.push(`mode of ${dir}`); }
    }
  }
  return changed;
}
