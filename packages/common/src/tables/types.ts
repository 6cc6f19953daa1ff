/**
 * The one lookup interface every table is read through (Postfix's dict(3)):
 * a table is named `type:source` and opened by the registry (registry.ts),
 * which finds the backend for `type`. Every lookup returns a promise, so a
 * backend may answer later (a database behind a proxymap-like service); the
 * file backends answer from memory.
 *
 * Errors: a table that cannot answer now (unreadable, malformed while being
 * edited, a database down) throws TableUnavailable, and the caller fails
 * temporarily (smtpd 451 4.3.0 / 454 4.7.0, local 451 4.3.0, delivery defers),
 * as Postfix does for a broken table. A spec that can never work (no `type:`,
 * an unknown type, a type that cannot be a user database) throws TableError,
 * which names the parameter and the type.
 */

/** A spec that cannot be opened: the configuration is wrong. */
// No own `name`: String(err) stays "Error: file:line: ..." as the file parsers always wrote it.
export class TableError extends Error {}

/** The table exists but cannot answer now; try again later (4xx, defer). */
export class TableUnavailable extends TableError {}

/** A key -> value table. Keys compare case-insensitively. */
export interface Table {
  /** `type:source` as configured. */
  readonly spec: string;
  /** The value for key, or undefined when there is none. */
  lookup(key: string): Promise<string | undefined>;
  /** Every key, for listing and checks; absent where the backend cannot list (a database may not). */
  keys?(): Promise<string[]>;
}

/** What AUTH needs, and nothing more. */
export interface Credentials {
  user: string;
  /** The stored hash, `{SCHEME}...` as Dovecot writes it (password.ts verifies it). */
  password: string;
}

/** What delivery needs: who owns the mailbox and where it is. No password. */
export interface UserInfo {
  /** The address, lower case. */
  user: string;
  uid: number | null;
  gid: number | null;
  /** Absolute, or '' when the user has none. */
  home: string;
  /** Dovecot userdb extra fields; `userdb_mail` (or `mail`) is the mailbox location (users.ts mailboxOf). */
  extra: Record<string, string>;
}

/** The user database (virtual_mailbox_maps): credentials and user info are separate lookups. */
export interface UserDb {
  readonly spec: string;
  /** The local file holding the users, when there is one: master and setup set its owner and ACL. */
  readonly file?: string;
  /** RCPT: is there such a user? */
  exists(address: string): Promise<boolean>;
  /** AUTH: the user's password hash. */
  credentials(address: string): Promise<Credentials | undefined>;
  /** local: uid, gid, home and mailbox location. */
  userInfo(address: string): Promise<UserInfo | undefined>;
  /** Every user (`postern user list`); absent where the backend cannot list. */
  list?(): Promise<UserInfo[]>;
}

export interface NewUser {
  uid: number | null;
  gid: number | null;
  home: string;
  mailbox?: 'maildir' | 'mbox';
}

/** The write side (`postern user add` / `del` / `passwd`), kept apart from the lookups the services do. */
export interface UserDbWriter {
  readonly spec: string;
  /** Throws if the address is unsafe or the user exists. */
  addUser(address: string, passwordHash: string, user: NewUser): Promise<void>;
  /** False when there is no such user. */
  deleteUser(address: string): Promise<boolean>;
  /** `postern user passwd`: replace the password hash; false when there is no such user. */
  setPassword(address: string, passwordHash: string): Promise<boolean>;
}

export interface WriterOptions {
  /** For a file backend run as root: sets owner, mode and ACL on the new file before it replaces the old one. */
  secure?: (fd: number) => void;
}

/**
 * One table type. `open` is called once per spec and process (the registry
 * caches); it should not fail on a source that is merely unavailable now:
 * lookups throw TableUnavailable instead, so a service starts and defers.
 */
export interface TableBackend {
  /** The `type` of `type:source`. */
  readonly type: string;
  open(source: string, spec: string): Table;
  /** Present when the type can serve virtual_mailbox_maps. */
  openUserDb?(source: string, spec: string): UserDb;
  /** Present when the type can be edited by `postern user add/del`. */
  openUserDbWriter?(source: string, spec: string, opts: WriterOptions): UserDbWriter;
}
