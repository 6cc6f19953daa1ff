/**
 * `passwd-file:FILE`: the Dovecot-compatible users file (format in users.ts),
 * so Dovecot's IMAP/POP3 can read the same users. It is a user database
 * (credentials and user info as separate lookups) and its own writer
 * (`postern user add/del`). As a plain table (`postern map query`) a key's
 * value is the mailbox, `format:path`, as Postfix's virtual_mailbox_maps
 * values are mailbox paths; the password hash is never a table value.
 */
import { UserTable, UserEntry, addUser, deleteUser, setUserPassword, mailboxOf } from './users.js';
import {
  Credentials, NewUser, Table, TableBackend, TableUnavailable, UserDb, UserDbWriter, UserInfo, WriterOptions,
} from './types.js';

const info = (e: UserEntry): UserInfo => ({ user: e.user, uid: e.uid, gid: e.gid, home: e.home, extra: { ...e.extra } });

class PasswdFileDb implements UserDb, Table {
  private table: UserTable | undefined;

  constructor(readonly spec: string, readonly file: string) {}

  /** Read at the first lookup, so a broken file makes lookups fail (4xx), not the service start. */
  private entry(address: string): UserEntry | undefined {
    this.table ??= new UserTable(this.file);
    return this.table.lookup(address);
  }

  async exists(address: string): Promise<boolean> {
    return this.entry(address) !== undefined;
  }

  async credentials(address: string): Promise<Credentials | undefined> {
    const e = this.entry(address);
    return e && { user: e.user, password: e.password };
  }

  async userInfo(address: string): Promise<UserInfo | undefined> {
    const e = this.entry(address);
    return e && info(e);
  }

  async list(): Promise<UserInfo[]> {
    this.table ??= new UserTable(this.file);
    return this.table.list().map(info);
  }

  async lookup(key: string): Promise<string | undefined> {
    const e = this.entry(key);
    if (!e) return undefined;
    let box;
    try { box = mailboxOf(e); } catch (err) { throw new TableUnavailable(`${this.spec}: ${(err as Error).message}`); }
    return `${box.format}:${box.path}`;
  }

  async keys(): Promise<string[]> {
    return (await this.list()).map((u) => u.user);
  }
}

class PasswdFileWriter implements UserDbWriter {
  constructor(readonly spec: string, private readonly file: string, private readonly opts: WriterOptions) {}

  async addUser(address: string, passwordHash: string, user: NewUser): Promise<void> {
    addUser(this.file, address, passwordHash, { ...user, secure: this.opts.secure });
  }

  async deleteUser(address: string): Promise<boolean> {
    return deleteUser(this.file, address, this.opts.secure);
  }

  async setPassword(address: string, passwordHash: string): Promise<boolean> {
    return setUserPassword(this.file, address, passwordHash, this.opts.secure);
  }
}

export const passwdFile: TableBackend = {
  type: 'passwd-file',
  open: (source, spec) => new PasswdFileDb(spec, source),
  openUserDb: (source, spec) => new PasswdFileDb(spec, source),
  openUserDbWriter: (source, spec, opts) => new PasswdFileWriter(spec, source, opts),
};
