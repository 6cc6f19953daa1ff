/**
 * Who runs what, and who may touch which part of the spool. This is the
 * privilege separation of ARCHITECTURE.md in one place: master applies it at
 * every start, `postern init` and `postern queue check` apply it too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { MainConfig, MasterEntry } from './config.js';
import { Spool } from '../queue/spool.js';
import { isRoot, lookupSystemUser, lookupGroupName, SystemUser } from '../util/system.js';
import { openDirNoFollow } from '../util/files.js';

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

/**
 * cleanup listens on two sockets, and which one a request came in on says who
 * sent it (smtpd, or the queue owner): `private/NAME` and `private/NAME.local`
 * (a dot no master.cf service name can have).
 */
export const CLEANUP_LOCAL = 'cleanup.local';

/**
 * local's second socket, `private/local.qmgr`: qmgr's delivery requests with the
 * message in the frames (docs/local.md). `private/local` stays local's LMTP
 * server (group: the lmtp client); this one's group is the queue owner's, so
 * only qmgr (and root) can ask local to deliver.
 */
export const LOCAL_QMGR = 'local.qmgr';

/** Owner, group and mode of a service's Unix socket: the group is exactly its allowed clients. */
export function socketAccess(command: string, a: ServiceAccounts): { uid: number; gid: number; mode: number } {
  switch (command) {
    case 'cleanup': return { uid: a.owner.uid, gid: a.smtpd.gid, mode: 0o660 }; // smtpd writes mail in
    // cleanup's second socket: the queue owner's own clients (pickup, qmgr's notifications) and root
    case CLEANUP_LOCAL: return { uid: a.owner.uid, gid: a.owner.gid, mode: 0o600 };
    case 'smtp': case 'lmtp': return { uid: a.relay.uid, gid: a.owner.gid, mode: 0o660 }; // qmgr asks for deliveries
    case 'local': return { uid: a.mailbox.uid, gid: a.relay.gid, mode: 0o660 }; // the lmtp client delivers
    case LOCAL_QMGR: return { uid: a.mailbox.uid, gid: a.owner.gid, mode: 0o660 }; // qmgr delivers, the message in the frames
    case 'anvil': return { uid: a.smtpd.uid, gid: a.smtpd.gid, mode: 0o600 }; // smtpd's client counters
    case 'showq': return { uid: a.owner.uid, gid: a.owner.gid, mode: 0o666 }; // mailq for every local user
    case 'metrics': return { uid: 0, gid: 0, mode: 0o600 }; // only master (root) feeds it the log events
    // database tables for smtpd (group) and cleanup (owner); proxymap adds ACL entries for local and smtp
    case 'proxymap': return { uid: a.owner.uid, gid: a.smtpd.gid, mode: 0o660 };
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
  { rel: 'local', uid: (a) => a.mailbox.uid, gid: (a) => a.mailbox.gid, mode: 0o700 }, // local's copies of multi-recipient messages
  { rel: 'private', uid: root, gid: root, mode: 0o755 },
  { rel: 'public', uid: root, gid: root, mode: 0o755 },
  { rel: 'pid', uid: root, gid: root, mode: 0o755 },
  { rel: 'mta-sts', uid: (a) => a.relay.uid, gid: (a) => a.relay.gid, mode: 0o700 }, // smtp's MTA-STS policy cache (docs/tls-policy.md)
  { rel: 'tlsrpt', uid: (a) => a.relay.uid, gid: (a) => a.relay.gid, mode: 0o700 }, // smtp's TLS-RPT session records and report state (docs/tlsrpt.md)
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
    const st = fs.lstatSync(dir, { throwIfNoEntry: false });
    if (st?.isDirectory()) compare(dir, a.owner.uid, a.relay.gid, 0o2750);
    else if (st && HASH_DIR_NAME.test(sub)) out.push({ path: dir, problem: `${kindOf(dir)}, not a directory (nothing follows it; remove it)`, missing: false });
  }
  return out;
}

/** Deferred's hash directories are named by one hex digit (Spool.pathOf). */
export const HASH_DIR_NAME = /^[0-9A-F]$/;

/** What a path is, for a message about something that is not the directory it should be. */
function kindOf(p: string): string {
  let st: fs.Stats;
  try { st = fs.lstatSync(p); } catch { return 'gone'; }
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isFile()) return st.nlink > 1 ? `a file with ${st.nlink} links` : 'a file';
  return st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'a special file';
}

/**
 * Put one directory's owner and mode right without ever following a link:
 * service accounts can write the spool, and a `deferred/7 -> /etc/shadow` they
 * plant must not make root chown its target. The directory is opened with
 * O_NOFOLLOW|O_DIRECTORY and changed through the descriptor, so a link or
 * anything else in its place is reported and left alone.
 */
function fixDirectory(dir: string, owner: { uid: number; gid: number } | null, mode: number, changed: string[]): void {
  const fd = openDirNoFollow(dir);
  if (fd === 'not a directory') { changed.push(`left ${dir} alone: ${kindOf(dir)}, not a directory`); return; }
  if (fd === 'missing') return; // removed meanwhile
  try {
    const st = fs.fstatSync(fd);
    if (owner && (st.uid !== owner.uid || st.gid !== owner.gid)) { fs.fchownSync(fd, owner.uid, owner.gid); changed.push(`owner of ${dir}`); }
    // chown may clear the setgid bit: compare with the mode as it is now
    if ((fs.fstatSync(fd).mode & 0o7777) !== mode) { fs.fchmodSync(fd, mode); changed.push(`mode of ${dir}`); }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Create the spool and put every directory's owner and mode right; returns what
 * it changed, and what it left alone because it is not a directory (a link).
 */
export function prepareSpool(spool: Spool, a: ServiceAccounts): string[] {
  const changed: string[] = [];
  for (const d of SPOOL_DIRS) {
    const dir = path.join(spool.root, d.rel);
    if (!lexists(dir)) { fs.mkdirSync(dir, { recursive: true, mode: 0o700 }); changed.push(`created ${dir}`); }
    fixDirectory(dir, a.privileged ? { uid: d.uid(a), gid: d.gid(a) } : null, d.mode, changed);
  }
  if (a.privileged) {
    // deferred's hash directories: qmgr (the queue owner) creates them, so they are the owner's to replace
    let names: string[] = [];
    try { names = fs.readdirSync(spool.dir('deferred')); } catch { /* not a directory: reported above */ }
    for (const sub of names) {
      if (HASH_DIR_NAME.test(sub)) fixDirectory(path.join(spool.dir('deferred'), sub), { uid: a.owner.uid, gid: a.relay.gid }, 0o2750, changed);
    }
  }
  return changed;
}

function lexists(p: string): boolean {
  try { fs.lstatSync(p); return true; } catch { return false; }
}

/**
 * The mailbox tree's root: created if missing, and as root a root-owned one is
 * given to mailbox_user (master at start, `postern setup`), through a descriptor.
 */
export function prepareMailRoot(base: string, a: ServiceAccounts): string[] {
  const done: string[] = [];
  if (!lexists(base)) { fs.mkdirSync(base, { recursive: true, mode: 0o755 }); done.push(`created ${base}`); }
  if (!a.privileged) return done;
  const fd = openDirNoFollow(base);
  if (fd === 'not a directory') { done.push(`left ${base} alone: ${kindOf(base)}, not a directory`); return done; }
  if (fd === 'missing') return done; // removed meanwhile
  try {
    if (fs.fstatSync(fd).uid === 0) { fs.fchownSync(fd, a.mailbox.uid, a.mailbox.gid); done.push(`owner of ${base}`); }
  } finally {
    fs.closeSync(fd);
  }
  return done;
}

/**
 * Postern's own service accounts by uid, as a root-started master runs them
 * (none in a sandbox, where everything runs as the invoking user). None of them
 * ever submits mail: a maildrop file one of them owns comes from a compromised
 * service, so pickup refuses it whatever authorized_submit_users says.
 */
const accountUidsCache = new WeakMap<MainConfig, Map<number, string>>();

function serviceAccountUids(config: MainConfig): Map<number, string> {
  // pickup asks for every file: /etc/passwd is read once per configuration (reload)
  const cached = accountUidsCache.get(config);
  if (cached) return cached;
  const out = new Map<number, string>();
  accountUidsCache.set(config, out);
  if (config.bool('unprivileged')) return out;
  for (const param of ['mail_owner', 'smtpd_user', 'relay_user', 'mailbox_user']) {
    const u = lookupSystemUser(config.get(param));
    if (u && u.uid !== 0) out.set(u.uid, `${u.name} (${param})`);
  }
  return out;
}

/**
 * Why the user `name` (uid) may not submit mail through maildrop/, or null.
 * authorized_submit_users as Postfix reads it: `static:anyone` (the default)
 * lets everyone, otherwise only the login names listed (first match wins,
 * `!name` excludes; an empty list lets nobody; a uid without a passwd entry is
 * `unknown`). Root is not exempt, as in Postfix. Enforced by pickup (the file
 * owner's uid); sendmail checks the same early to give a clear message.
 */
export function submitRefusal(config: MainConfig, uid: number, name: string): string | null {
  const svc = serviceAccountUids(config).get(uid);
  if (svc) return `User ${name}(${uid}) is not allowed to submit mail: ${svc} is a Postern service account`;
  for (const item of config.list('authorized_submit_users')) {
    const negated = item.startsWith('!');
    const pattern = negated ? item.slice(1) : item;
    let match: boolean;
    if (pattern === 'static:anyone') match = true;
    else if (/^[a-z0-9_-]+:/.test(pattern)) {
      // fail closed: a table this version cannot read lets nobody in
      return `User ${name}(${uid}) is not allowed to submit mail: authorized_submit_users names "${pattern}", which is not supported (static:anyone or login names)`;
    } else match = pattern === name;
    if (match) return negated ? `User ${name}(${uid}) is not allowed to submit mail (authorized_submit_users)` : null;
  }
  return `User ${name}(${uid}) is not allowed to submit mail (authorized_submit_users)`;
}

/**
 * The users file (virtual_mailbox_maps) as the services need it. Owner root: a
 * service that could write it could add an AUTH user or point a mailbox
 * anywhere. Group smtpd_user's, 0640: smtpd checks RCPT and AUTH against it.
 * local (mailbox_user) finds mailboxes in it and reads it through one POSIX ACL
 * entry, since services keep only their primary group and no group can hold
 * exactly smtpd and local. No other service reads it. See docs/security.md.
 */
const USERS_FILE_MODE = 0o640;

function usersFileAcl(a: ServiceAccounts): string {
  return `u::rw-,g::r--,o::---,u:${a.mailbox.uid}:r--,m::r--`;
}

/** Apply owner, mode and ACL to an open users file (a descriptor: never a path that could be swapped). */
export function secureUsersFileFd(fd: number, a: ServiceAccounts): void {
  fs.fchownSync(fd, 0, a.smtpd.gid);
  fs.fchmodSync(fd, USERS_FILE_MODE);
  try {
    // setfacl reaches our descriptor through /proc, so the file it changes is the one we opened
    execFileSync('setfacl', ['--set', usersFileAcl(a), `/proc/${process.pid}/fd/${fd}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('setfacl is not installed (Debian package "acl"): it lets mailbox_user (local) read the users file');
    }
    throw new Error(`setfacl on the users file: ${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()}`);
  }
}

/** Whether the open users file has exactly the ACL secureUsersFileFd gives it. */
function usersFileAclRight(fd: number, a: ServiceAccounts): boolean {
  try {
    const text = execFileSync('getfacl', ['--omit-header', '--numeric', '--absolute-names', `/proc/${process.pid}/fd/${fd}`],
      { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
    const entries = text.split('\n').map((l) => l.replace(/\s*#.*$/, '').trim()).filter(Boolean).sort();
    const want = usersFileAcl(a).split(',').map((e) => e.replace(/^u:/, 'user:').replace(/^g:/, 'group:').replace(/^o:/, 'other:').replace(/^m:/, 'mask:')).sort();
    return entries.join(',') === want.join(',');
  } catch {
    return false;
  }
}

/**
 * Put the users file's owner, mode and ACL right (as root, privileged; master
 * at start, init, setup, user add/del); returns what changed. A missing file
 * is left missing; a link or anything but a regular file is refused.
 */
export function secureUsersFile(file: string, a: ServiceAccounts): string[] {
  if (!a.privileged) return [];
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    if (code === 'ELOOP') return [`left ${file} alone: a symbolic link (the users file must be the file itself)`];
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return [`left ${file} alone: not a regular file`];
    if (st.uid === 0 && st.gid === a.smtpd.gid && (st.mode & 0o7777) === USERS_FILE_MODE && usersFileAclRight(fd, a)) return [];
    secureUsersFileFd(fd, a);
    return [`owner, mode and ACL of ${file} (root:${a.smtpd.name}'s group 0640, ${a.mailbox.name} may read)`];
  } finally {
    fs.closeSync(fd);
  }
}

/** What an account can do with a path, asked of the kernel itself (ACLs included). */
export interface AccessWant { path: string; want: 'read' | 'write' | 'enter' }

/**
 * As root: can `user` (with its primary group only, as master runs services)
 * reach and use each path? Asked by a child process running as that user, so
 * the kernel's answer counts, ACLs and all. For each path: null, or what
 * blocks it, naming the directory it cannot enter. Not root: null for all
 * (the caller falls back to reading modes).
 */
export function accessAs(user: SystemUser, wants: AccessWant[]): (string | null)[] {
  if (!isRoot() || !wants.length) return wants.map(() => null);
  const probe = `
    const fs = require('fs'), path = require('path');
    const out = JSON.parse(process.argv[1]).map(({ path: p, want }) => {
      const parts = path.resolve(p).split('/').filter(Boolean);
      let dir = '/';
      for (let i = 0; i < parts.length; i++) {
        try { fs.accessSync(dir, fs.constants.X_OK); } catch (e) { return { blocked: dir, code: e.code }; }
        dir = path.join(dir, parts[i]);
      }
      const mode = want === 'read' ? fs.constants.R_OK : want === 'write' ? fs.constants.W_OK | fs.constants.X_OK : fs.constants.X_OK;
      try { fs.accessSync(p, mode); return null; } catch (e) { return { code: e.code }; }
    });
    process.stdout.write(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['-e', probe, JSON.stringify(wants)],
    { uid: user.uid, gid: user.gid, cwd: '/', encoding: 'utf8', timeout: 10000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  let results: ({ blocked?: string; code: string } | null)[];
  try { results = JSON.parse(r.stdout); } catch { return wants.map(() => `cannot check as ${user.name}: ${r.stderr || r.error?.message || `exit ${r.status}`}`); }
  return results.map((res, i) => {
    if (!res) return null;
    if (res.blocked) {
      let how = '';
      try { const st = fs.statSync(res.blocked); how = ` (owner ${lookupSystemUser(st.uid)?.name ?? st.uid}, mode 0${(st.mode & 0o7777).toString(8)})`; } catch { /* gone */ }
      return `${user.name} cannot enter ${res.blocked}${how}`;
    }
    if (res.code === 'ENOENT') return `${wants[i].path} does not exist`;
    return `${user.name} cannot ${wants[i].want} ${wants[i].path}`;
  });
}

/**
 * What keeps a service account from its configuration or the spool: every
 * service reads main.cf at start and works in queue_directory, so an instance
 * under a directory an account cannot enter (a 0700 parent) would have its
 * services die at start over and over. As root, privileged; one line per
 * account and path, naming the directory that blocks which account.
 */
export function serviceAccessProblems(configDir: string, config: MainConfig, entries: MasterEntry[], a: ServiceAccounts): string[] {
  if (!a.privileged) return [];
  const users = new Map<number, { user: SystemUser; commands: Set<string> }>();
  for (const e of entries) {
    const u = e.user === '-' ? defaultAccount(e.command, a) : lookupSystemUser(e.user);
    if (!u) continue; // master.cf's check names a missing user
    if (!users.has(u.uid)) users.set(u.uid, { user: u, commands: new Set() });
    users.get(u.uid)!.commands.add(e.command);
  }
  const out: string[] = [];
  const wants: AccessWant[] = [
    { path: path.join(configDir, 'main.cf'), want: 'read' },
    { path: config.get('queue_directory'), want: 'enter' },
  ];
  for (const { user, commands } of users.values()) {
    accessAs(user, wants).forEach((problem, i) => {
      if (problem) out.push(`${problem}: ${[...commands].join(', ')} (running as ${user.name}) cannot ${i === 0 ? 'read' : 'reach'} ${wants[i].path}`);
    });
  }
  return out;
}

/**
 * Where a program of the suite is (`master`, `smtpd`, ...): Postfix's
 * daemon_directory, by default the installed program tree next to this
 * package. Programs start each other as processes from here; none loads
 * another's code.
 */
export function programPath(program: string, config: MainConfig): string {
  const dir = config.get('daemon_directory') || path.resolve(__dirname, '..', '..', '..');
  return path.join(dir, program, 'dist', 'main.js');
}
