/**
 * What pgsql: and sqlite: share: Postfix's pgsql_table(5)/sqlite_table(5)
 * parameter file (`hosts`, `user`, `password`, `dbname`, `dbpath`, `query`
 * with %s %u %d, `result_format`, `domain`), the key expansion with quoting,
 * and the Table / UserDb / UserDbWriter over any SQL driver.
 *
 * The user database needs more than one key -> value query, so the file may
 * also hold Postern's (Dovecot-named) `password_query`, `user_query`,
 * `list_query`, `insert_query` and `delete_query`; their defaults read the
 * schema in docs/sql/, which Dovecot's passdb/userdb sql read too.
 *
 * Under master, every service but proxymap reaches the database through the
 * proxymap service (proxy-client.ts): it never reads this file (it holds the
 * database password) and holds no connection. proxymap and the CLI (root)
 * read the file and connect themselves.
 */
import * as path from 'node:path';
import { mailboxOf } from './users.js';
import { validateMailboxAddress } from './users.js';
import {
  Credentials, NewUser, Table, TableBackend, TableUnavailable, UserDb, UserDbWriter, UserInfo,
} from './types.js';
import { proxyTable, proxyUserDb, useProxy } from './proxy-client.js';
import { WatchedFile } from './watched-file.js';

export interface SqlCf {
  file: string;
  hosts: string[];
  user: string;
  password: string;
  dbname: string;
  dbpath: string;
  query: string;
  resultFormat: string;
  domains: string[];
  passwordQuery: string;
  userQuery: string;
  listQuery: string;
  insertQuery: string;
  deleteQuery: string;
  updatePasswordQuery: string;
}

const KEYS = new Set(['hosts', 'user', 'password', 'dbname', 'dbpath', 'query', 'result_format', 'domain', 'expansion_limit',
  'password_query', 'user_query', 'list_query', 'insert_query', 'delete_query', 'update_password_query']);

/** Parse a Postfix SQL table file; a problem throws `FILE:LINE: problem` (TableUnavailable: fix the file, mail waits). */
export function parseSqlCf(text: string, file: string): SqlCf {
  const vals = new Map<string, string>();
  let last: string | null = null;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    const where = `${file}:${i + 1}`;
    if (/^\s*(#|$)/.test(line)) return;
    if (/^\s/.test(line)) {
      // continuation, as in main.cf
      if (last === null) throw new TableUnavailable(`${where}: continuation line without a parameter`);
      vals.set(last, `${vals.get(last)} ${line.trim()}`);
      return;
    }
    const m = /^([a-z_]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m) throw new TableUnavailable(`${where}: expected "name = value", found "${line.slice(0, 60)}"`);
    if (!KEYS.has(m[1])) {
      const hint = ['table', 'select_field', 'where_field', 'additional_conditions'].includes(m[1]) ? ' (the old interface: write a "query" instead)' : '';
      throw new TableUnavailable(`${where}: unknown parameter "${m[1]}"${hint}`);
    }
    last = m[1];
    vals.set(m[1], m[2]);
  });
  const v = (k: string, d = '') => vals.get(k) ?? d;
  return {
    file,
    hosts: v('hosts').split(/[\s,]+/).filter(Boolean),
    user: v('user'),
    password: v('password'),
    dbname: v('dbname'),
    dbpath: v('dbpath'),
    query: v('query'),
    resultFormat: v('result_format', '%s'),
    domains: v('domain').split(/[\s,]+/).filter(Boolean).map((d) => d.toLowerCase()),
    passwordQuery: v('password_query', "SELECT password FROM users WHERE email = '%s'"),
    userQuery: v('user_query', "SELECT email, uid, gid, home, mail FROM users WHERE email = '%s'"),
    listQuery: v('list_query', 'SELECT email, uid, gid, home, mail FROM users ORDER BY email'),
    insertQuery: v('insert_query', "INSERT INTO users (email, password, uid, gid, home, mail) VALUES ('%s', '%p', %U, %G, '%h', '%m')"),
    deleteQuery: v('delete_query', "DELETE FROM users WHERE email = '%s'"),
    updatePasswordQuery: v('update_password_query', "UPDATE users SET password = '%p' WHERE email = '%s'"),
  };
}

/** A string as the inside of a '...' SQL literal (standard_conforming_strings: only ' is special). */
export function sqlQuote(s: string): string {
  return s.replace(/'/g, "''");
}

/**
 * Expand Postfix's %-escapes in a query: %s the key, %u its local part, %d
 * its domain, %% a %. As Postfix, a query using %u or %d for a key without
 * a domain (or %d... ) is not run: null means "no result".
 */
export function expandQuery(query: string, key: string, extra: Record<string, string> = {}): string | null {
  const at = key.lastIndexOf('@');
  let skip = false;
  const out = query.replace(/%(.)/g, (_, c: string) => {
    if (c === '%') return '%';
    if (c === 's') return sqlQuote(key);
    if (c === 'u') return sqlQuote(at < 0 ? key : key.slice(0, at));
    if (c === 'd') { if (at < 0) skip = true; return sqlQuote(key.slice(at + 1)); }
    if (c in extra) return extra[c];
    throw new TableUnavailable(`unsupported %${c} in query "${query}"`);
  });
  return skip ? null : out;
}

/** Apply result_format (%s, %u, %d of one result value). */
function formatResult(format: string, value: string): string {
  const at = value.lastIndexOf('@');
  return format.replace(/%(.)/g, (m, c: string) =>
    c === 's' ? value : c === 'u' ? (at < 0 ? value : value.slice(0, at)) : c === 'd' ? (at < 0 ? '' : value.slice(at + 1)) : c === '%' ? '%' : m);
}

export interface SqlResult { rows: Record<string, unknown>[]; rowCount: number }

/** One database connection (pool) per .cf file and process; errors are TableUnavailable. */
export interface SqlDriver {
  query(sql: string): Promise<SqlResult>;
  end(): Promise<void>;
}

/** Reads the .cf (a WatchedFile: re-read when it changes) and keeps one driver per content. */
class CfSource {
  private readonly watched: WatchedFile<{ cf: SqlCf; driver: SqlDriver }>;
  /** The newest driver, kept to be closed even while the file is broken. */
  driver: SqlDriver | undefined;

  constructor(readonly spec: string, file: string, makeDriver: (cf: SqlCf) => SqlDriver) {
    this.watched = new WatchedFile(file, (text, f) => {
      const cf = parseSqlCf(text, f); // a broken file keeps failing, on the old connections unused, until it is fixed
      void this.driver?.end().catch(() => undefined);
      this.driver = makeDriver(cf);
      return { cf, driver: this.driver };
    }, { readError: `${spec}: cannot read` });
  }

  current(): { cf: SqlCf; driver: SqlDriver } {
    return this.watched.get();
  }

  async run(sql: string): Promise<SqlResult> {
    const { driver } = this.current();
    try {
      return await driver.query(sql);
    } catch (e) {
      if (e instanceof TableUnavailable) throw e;
      throw new TableUnavailable(`${this.spec}: ${(e as Error).message}`);
    }
  }
}

const str = (v: unknown): string | undefined => (v === null || v === undefined ? undefined : String(v));
const num = (v: unknown): number | null => (v === null || v === undefined || v === '' ? null : Number(v));

function rowInfo(address: string, r: Record<string, unknown>): UserInfo {
  const extra: Record<string, string> = {};
  const mail = str(r.mail) ?? str(r.userdb_mail);
  if (mail) extra.userdb_mail = mail;
  return { user: (str(r.email) ?? str(r.user) ?? address).toLowerCase(), uid: num(r.uid), gid: num(r.gid), home: str(r.home) ?? '', extra };
}

class SqlTable implements Table, UserDb {
  constructor(readonly spec: string, private readonly src: CfSource) {}

  async lookup(key: string): Promise<string | undefined> {
    const { cf } = this.src.current();
    if (!cf.query) throw new TableUnavailable(`${cf.file}: no "query" for lookups in ${this.spec}`);
    key = key.toLowerCase();
    if (key.includes('\0')) return undefined;
    if (cf.domains.length) {
      const at = key.lastIndexOf('@');
      if (at < 0 || !cf.domains.includes(key.slice(at + 1))) return undefined;
    }
    const sql = expandQuery(cf.query, key);
    if (sql === null) return undefined;
    const res = await this.src.run(sql);
    const values: string[] = [];
    for (const row of res.rows) for (const v of Object.values(row)) if (v !== null && v !== undefined && v !== '') values.push(formatResult(cf.resultFormat, String(v)));
    return values.length ? values.join(',') : undefined;
  }

  private async userRow(address: string): Promise<Record<string, unknown> | undefined> {
    const { cf } = this.src.current();
    address = address.toLowerCase();
    if (address.includes('\0')) return undefined;
    const sql = expandQuery(cf.userQuery, address);
    return sql === null ? undefined : (await this.src.run(sql)).rows[0];
  }

  async exists(address: string): Promise<boolean> {
    return (await this.userRow(address)) !== undefined;
  }

  async credentials(address: string): Promise<Credentials | undefined> {
    const { cf } = this.src.current();
    address = address.toLowerCase();
    if (address.includes('\0')) return undefined;
    const sql = expandQuery(cf.passwordQuery, address);
    if (sql === null) return undefined;
    const row = (await this.src.run(sql)).rows[0];
    const pw = row && str(row.password);
    return pw === undefined ? undefined : { user: address, password: pw };
  }

  async userInfo(address: string): Promise<UserInfo | undefined> {
    const row = await this.userRow(address);
    return row && rowInfo(address.toLowerCase(), row);
  }

  async list(): Promise<UserInfo[]> {
    const { cf } = this.src.current();
    return (await this.src.run(cf.listQuery)).rows.map((r) => rowInfo('', r));
  }
}

class SqlWriter implements UserDbWriter {
  constructor(readonly spec: string, private readonly src: CfSource) {}

  async addUser(address: string, passwordHash: string, user: NewUser): Promise<void> {
    const addr = address.toLowerCase();
    const bad = validateMailboxAddress(addr);
    if (bad) throw new Error(`bad address: ${bad}`);
    if (!user.home.startsWith('/')) throw new Error(`home "${user.home}" is not an absolute path`);
    const { cf } = this.src.current();
    const existing = await this.src.run(expandQuery(cf.userQuery, addr)!);
    if (existing.rows.length) throw new Error(`${this.spec}: user ${addr} already exists`);
    const mail = user.mailbox === 'mbox' ? 'mbox:~/mail:INBOX=~/mbox' : 'maildir:~/Maildir';
    mailboxOf({ user: addr, home: user.home, extra: { userdb_mail: mail } }); // the same checks as the file backend
    const sql = expandQuery(cf.insertQuery, addr, {
      p: sqlQuote(passwordHash), h: sqlQuote(user.home), m: sqlQuote(mail),
      U: user.uid === null ? 'NULL' : String(Math.trunc(user.uid)), G: user.gid === null ? 'NULL' : String(Math.trunc(user.gid)),
    });
    await this.src.run(sql!);
  }

  async deleteUser(address: string): Promise<boolean> {
    const { cf } = this.src.current();
    const sql = expandQuery(cf.deleteQuery, address.toLowerCase());
    return sql !== null && (await this.src.run(sql)).rowCount > 0;
  }

  async setPassword(address: string, passwordHash: string): Promise<boolean> {
    const { cf } = this.src.current();
    const sql = expandQuery(cf.updatePasswordQuery, address.toLowerCase(), { p: sqlQuote(passwordHash) });
    return sql !== null && (await this.src.run(sql)).rowCount > 0;
  }
}

// One source (file + connections) per spec and process, shared by its table, user db and writer.
const sources = new Map<string, CfSource>();

/** A TableBackend for an SQL type, given how to connect. */
export function sqlBackend(type: string, makeDriver: (cf: SqlCf) => SqlDriver): TableBackend {
  const source = (file: string, spec: string): CfSource => {
    let s = sources.get(spec);
    if (!s) sources.set(spec, s = new CfSource(spec, path.resolve(file), makeDriver));
    return s;
  };
  return {
    type,
    open: (file, spec) => (useProxy() ? proxyTable(spec) : new SqlTable(spec, source(file, spec))),
    openUserDb: (file, spec) => (useProxy() ? proxyUserDb(spec) : new SqlTable(spec, source(file, spec))),
    openUserDbWriter: (file, spec) => new SqlWriter(spec, source(file, spec)),
  };
}

/** Close every database connection this process holds (CLI exit, proxymap stop). */
export async function closeSqlTables(): Promise<void> {
  for (const s of sources.values()) {
    try { await s.driver?.end(); } catch { /* nothing to close */ }
  }
  sources.clear();
}
