// The users table: a Dovecot-compatible passwd-file, so Dovecot's IMAP/POP3 can read the
// same users and find the same mailboxes.
//
//   user:password:uid:gid:gecos:home:shell:extra_fields
//   alice@example.org:{SHA512-CRYPT}$6$...:5000:5000::/var/vmail/example.org/alice::userdb_mail=maildir:~/Maildir
//
// Extra fields are space-separated `key=value` (or a bare `key`); the last field may
// itself contain ':' (mail locations do), so a line is split on the first seven colons.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { replaceFileDurably } from '../util/files.js';
import { WatchedFile } from './watched-file.js';

export interface UserEntry {
  user: string;
  password: string;
  uid: number | null;
  gid: number | null;
  gecos: string;
  home: string;
  shell: string;
  extra: Record<string, string>;
  /** 1-based line number in the file it came from (for error messages). */
  line: number;
}

/**
 * Why `address` is unsafe to use as a user name / mailbox directory component, or null.
 * The local part and the domain become path components (`/var/vmail/%d/%n`), so neither
 * may be able to climb out of, or into odd corners of, the mailbox tree.
 */
export function validateMailboxAddress(address: string): string | null {
  const parts = address.split('@');
  if (parts.length !== 2) return `"${printable(address)}" must contain exactly one "@"`;
  for (const [what, p] of [['local part', parts[0]], ['domain', parts[1]]] as const) {
    if (p === '') return `${what} is empty`;
    if (p.includes('/')) return `${what} contains "/"`;
    // Control characters include NUL, which would truncate the path in syscalls.
    if (/[\x00-\x1f\x7f]/.test(p)) return `${what} contains a control character`;
    // Covers "." and ".." (the whole part is one path component since "/" is excluded)
    // and hidden files such as Maildir's own ".Folder" directories.
    if (p.startsWith('.')) return `${what} starts with "."`;
    if (Buffer.byteLength(p) > 255) return `${what} is longer than 255 bytes`;
  }
  return null;
}

function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function parseId(s: string, what: string): number | null {
  if (s === '') return null;
  if (!/^[0-9]{1,10}$/.test(s) || Number(s) > 0xffffffff) throw new Error(`${what} "${s}" is not a number`);
  return Number(s);
}

/** Parse a passwd-file; any malformed line throws `${fileName}:${line}: problem`. */
export function parsePasswdFile(text: string, fileName: string): UserEntry[] {
  const out: UserEntry[] = [];
  const seen = new Map<string, number>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].replace(/\r$/, '');
    if (raw.trim() === '' || raw.trimStart().startsWith('#')) continue;
    try {
      const e = parseLine(raw, i + 1);
      const first = seen.get(e.user);
      if (first !== undefined) throw new Error(`duplicate user ${e.user} (first on line ${first})`);
      seen.set(e.user, e.line);
      out.push(e);
    } catch (err) {
      throw new Error(`${fileName}:${i + 1}: ${(err as Error).message}`);
    }
  }
  return out;
}

function parseLine(raw: string, line: number): UserEntry {
  const f: string[] = [];
  let rest = raw;
  for (let k = 0; k < 7; k++) {
    const c = rest.indexOf(':');
    if (c < 0) break;
    f.push(rest.slice(0, c));
    rest = rest.slice(c + 1);
  }
  f.push(rest);
  if (f.length < 2) throw new Error('expected user:password[:uid:gid:gecos:home:shell:extra_fields]');
  const user = f[0].toLowerCase();
  const bad = validateMailboxAddress(user);
  if (bad) throw new Error(`bad user name: ${bad}`);
  const home = f[5] ?? '';
  // A relative home would be resolved against whatever cwd a service happens to have.
  if (home !== '' && !home.startsWith('/')) throw new Error(`home "${home}" is not an absolute path`);
  const extra: Record<string, string> = {};
  for (const tok of (f[7] ?? '').split(' ')) {
    if (tok === '') continue;
    const eq = tok.indexOf('=');
    const key = eq < 0 ? tok : tok.slice(0, eq);
    if (key === '') throw new Error(`extra field "${tok}" has no name`);
    extra[key] = eq < 0 ? '' : tok.slice(eq + 1);
  }
  return {
    user,
    password: f[1],
    uid: parseId(f[2] ?? '', 'uid'),
    gid: parseId(f[3] ?? '', 'gid'),
    gecos: f[4] ?? '',
    home,
    shell: f[6] ?? '',
    extra,
    line,
  };
}

/** One passwd-file line (no newline); throws if a field could not be read back. */
export function formatPasswdLine(e: Omit<UserEntry, 'line'>): string {
  const fields = [e.user, e.password, e.uid ?? '', e.gid ?? '', e.gecos, e.home, e.shell].map(String);
  for (const v of fields) {
    if (/[:\r\n]/.test(v)) throw new Error(`passwd-file field "${printable(v)}" contains ":" or a line break`);
  }
  const extras = Object.entries(e.extra).map(([k, v]) => {
    if (k === '' || /[=\s]/.test(k) || /\s/.test(v)) throw new Error(`bad extra field "${printable(k)}=${printable(v)}"`);
    return v === '' ? k : `${k}=${v}`;
  });
  const line = [...fields, extras.join(' ')].join(':');
  parseLine(line, 0); // what we write must read back: address, ids, home are checked there
  return line;
}

/**
 * Where a user's mail goes, from `userdb_mail` (or `mail`) in Dovecot's mail_location
 * syntax: `maildir:PATH` or `mbox:DIR[:INBOX=FILE]`, with `~` = home and the variables
 * %u %n %d %h %%. Without one: Maildir at `${home}/Maildir`. Throws on what it cannot
 * honour (other formats, unknown variables, a relative result) so delivery defers.
 */
export function mailboxOf(e: Pick<UserEntry, 'user' | 'home' | 'extra'>): { format: 'maildir' | 'mbox'; path: string } {
  const loc = e.extra['userdb_mail'] ?? e.extra['mail'] ?? 'maildir:~/Maildir';
  const [format, root = '', ...opts] = loc.split(':');
  const at = e.user.lastIndexOf('@');
  const vars: Record<string, string> = {
    u: e.user,
    n: at < 0 ? e.user : e.user.slice(0, at),
    d: at < 0 ? '' : e.user.slice(at + 1),
    h: e.home,
    '%': '%',
  };
  const expand = (p: string): string => {
    p = p.replace(/%(.)/g, (_, v: string) => {
      if (!(v in vars)) throw new Error(`${e.user}: unsupported variable %${v} in mail location "${loc}"`);
      return vars[v];
    });
    if (p === '~' || p.startsWith('~/')) {
      if (e.home === '') throw new Error(`${e.user}: mail location uses ~ but the user has no home`);
      p = e.home + p.slice(1);
    }
    if (!p.startsWith('/')) throw new Error(`${e.user}: mail location "${loc}" is not an absolute path`);
    return path.posix.normalize(p);
  };
  if (format === 'maildir') return { format, path: expand(root) };
  if (format === 'mbox') {
    const inbox = opts.find((o) => o.startsWith('INBOX='));
    // Dovecot's default INBOX for an mbox root without INBOX= is <root>/inbox.
    return { format, path: expand(inbox ? inbox.slice('INBOX='.length) : `${root}/inbox`) };
  }
  throw new Error(`${e.user}: unsupported mail format "${format}" in "${loc}"`);
}

/**
 * A passwd-file kept in memory and re-read when it changes, checked at most once per
 * `minCheckIntervalMs` (tables/watched-file.ts). A missing file is an empty table. A
 * malformed file throws (TableUnavailable) from the constructor and from every lookup
 * until it is fixed. The passwd-file backend (tables/passwd-file.ts) serves it.
 */
export class UserTable {
  private readonly watched: WatchedFile<{ entries: UserEntry[]; byUser: Map<string, UserEntry> }>;

  constructor(
    readonly file: string,
    opts: { minCheckIntervalMs?: number } = {},
  ) {
    const parse = (text: string, name: string) => {
      const entries = parsePasswdFile(text, name);
      return { entries, byUser: new Map(entries.map((e) => [e.user, e])) };
    };
    this.watched = new WatchedFile(file, parse, { ...opts, missing: () => ({ entries: [], byUser: new Map() }) });
    this.watched.get();
  }

  lookup(address: string): UserEntry | undefined {
    return this.watched.get().byUser.get(address.toLowerCase());
  }

  list(): UserEntry[] {
    return [...this.watched.get().entries];
  }
}

/** Current text of the file, or '' if it does not exist. */
function readIfExists(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Follow a symlinked table to the real file, so the rewrite replaces that, not the link. */
function realTarget(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file;
  }
}

/**
 * Rewrite the table durably, keeping an existing file's mode (and owner, when root); a new file gets 0640.
 * `secure` (as root: layout.ts's secureUsersFileFd) sets owner, mode and ACL on the new file before the rename.
 */
function writeFileAtomic(file: string, text: string, secure?: (fd: number) => void): void {
  let mode = 0o640;
  let owner: { uid: number; gid: number } | undefined;
  try {
    const st = fs.statSync(file);
    mode = st.mode & 0o7777;
    if (process.getuid?.() === 0) owner = { uid: st.uid, gid: st.gid };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  replaceFileDurably(file, text, mode, owner, secure);
}

/**
 * Append a user to the passwd-file at `file` (created if missing), keeping every other
 * line and comment as it is. Throws if the address is unsafe or the user already exists.
 */
export function addUser(
  file: string,
  address: string,
  passwordHash: string,
  opts: { uid: number | null; gid: number | null; home: string; mailbox?: 'maildir' | 'mbox'; secure?: (fd: number) => void },
): void {
  const user = address.toLowerCase();
  const bad = validateMailboxAddress(user);
  if (bad) throw new Error(`bad address: ${bad}`);
  if (!opts.home.startsWith('/')) throw new Error(`home "${opts.home}" is not an absolute path`);
  const target = realTarget(file);
  const text = readIfExists(target);
  const existing = parsePasswdFile(text, file).find((e) => e.user === user);
  if (existing) throw new Error(`${file}:${existing.line}: user ${user} already exists`);
  // Always explicit, so Dovecot (whatever its mail_location) and Postern agree.
  const mail = opts.mailbox === 'mbox' ? 'mbox:~/mail:INBOX=~/mbox' : 'maildir:~/Maildir';
  const line = formatPasswdLine({
    user,
    password: passwordHash,
    uid: opts.uid,
    gid: opts.gid,
    gecos: '',
    home: opts.home,
    shell: '',
    extra: { userdb_mail: mail },
  });
  const sep = text === '' || text.endsWith('\n') ? '' : '\n';
  writeFileAtomic(target, `${text}${sep}${line}\n`, opts.secure);
}

/**
 * Rewrite the file with a user's line changed by `edit` (the lines, the entry), keeping
 * everything else. False (file untouched) if the user is absent.
 */
function editUserLine(file: string, address: string, secure: ((fd: number) => void) | undefined,
  edit: (lines: string[], entry: UserEntry) => void): boolean {
  const user = address.toLowerCase();
  const target = realTarget(file);
  const text = readIfExists(target);
  const entry = parsePasswdFile(text, file).find((e) => e.user === user);
  if (!entry) return false;
  const lines = text.split('\n');
  edit(lines, entry);
  writeFileAtomic(target, lines.join('\n'), secure);
  return true;
}

/** Replace a user's password hash, keeping every other field and line. False (file untouched) if absent. */
export function setUserPassword(file: string, address: string, passwordHash: string, secure?: (fd: number) => void): boolean {
  return editUserLine(file, address, secure, (lines, { line, ...fields }) => {
    lines[line - 1] = formatPasswdLine({ ...fields, password: passwordHash });
  });
}

/** Remove a user's line, keeping everything else. False (file untouched) if absent. */
export function deleteUser(file: string, address: string, secure?: (fd: number) => void): boolean {
  return editUserLine(file, address, secure, (lines, entry) => { lines.splice(entry.line - 1, 1); });
}

/**
 * The domain names written in mydestination and virtual_mailbox_domains, lower-cased;
 * their `type:source` tables are not included (domains.ts LocalDomains asks those).
 */
export function localDomains(config: { list(name: string): string[] }): Set<string> {
  return new Set([...config.list('mydestination'), ...config.list('virtual_mailbox_domains')]
    .filter((d) => !/^[a-z][a-z0-9-]*:/.test(d)).map((d) => d.toLowerCase()));
}
