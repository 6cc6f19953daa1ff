/**
 * The table types, by the `type` of `type:source` (Postfix's dict_open):
 * adding one (sqlite:, pgsql:) is a new backend file and one line in BACKENDS.
 * Every program opens its tables here, users included.
 */
import { Table, TableBackend, TableError, UserDb, UserDbWriter, WriterOptions } from './types.js';
import { texthash } from './texthash.js';
import { passwdFile } from './passwd-file.js';
import { pgsql } from './pgsql.js';
import { sqlite } from './sqlite.js';

/**
 * `proxy:TYPE:SOURCE`, as Postfix writes it: the same table. Postern's pgsql: and
 * sqlite: already go through proxymap in every service (docs/tables.md), so the
 * prefix only lets a Postfix configuration be used as it is.
 */
const proxy: TableBackend = {
  type: 'proxy',
  open: (source) => openTable(source)!,
  openUserDb: (source) => openUserDb(source),
  openUserDbWriter: (source, _spec, opts) => openUserDbWriter(source, opts),
};

const BACKENDS = new Map<string, TableBackend>([texthash, passwdFile, pgsql, sqlite, proxy].map((b) => [b.type, b]));

/** The known types, for messages and `postern check`. */
export function tableTypes(): string[] {
  return [...BACKENDS.keys()];
}

/** Splits `type:source` and finds its backend; `param` names the parameter in errors. */
function resolve(spec: string, param?: string): { backend: TableBackend; source: string } {
  const where = param ? `${param}: ` : '';
  const m = /^([a-z][a-z0-9-]*):(.+)$/.exec(spec);
  if (!m) throw new TableError(`${where}"${spec}" is not a lookup table (type:source)`);
  const backend = BACKENDS.get(m[1]);
  if (!backend) throw new TableError(`${where}${spec}: unsupported table type "${m[1]}" (${tableTypes().join(', ')})`);
  return { backend, source: m[2] };
}

// One object per spec and process: a file table is read once and re-read on change.
const tables = new Map<string, Table>();
const userDbs = new Map<string, UserDb>();

/** Open (once per process) the table a parameter names; '' gives null. */
export function openTable(spec: string, param?: string): Table | null {
  if (!spec) return null;
  let t = tables.get(spec);
  if (!t) {
    const { backend, source } = resolve(spec, param);
    tables.set(spec, t = backend.open(source, spec));
  }
  return t;
}

/** The types that can hold users. */
function userDbTypes(): string {
  return [...BACKENDS.values()].filter((b) => b.openUserDb).map((b) => b.type).join(', ');
}

/** Open (once per process) a user database. */
export function openUserDb(spec: string, param = 'virtual_mailbox_maps'): UserDb {
  let db = userDbs.get(spec);
  if (!db) {
    const { backend, source } = resolve(spec, param);
    if (!backend.openUserDb) throw new TableError(`${param}: ${spec}: a ${backend.type} table cannot hold users (${userDbTypes()})`);
    userDbs.set(spec, db = backend.openUserDb(source, spec));
  }
  return db;
}

/** The write side of a user database, for `postern user add/del`. */
export function openUserDbWriter(spec: string, opts: WriterOptions = {}, param = 'virtual_mailbox_maps'): UserDbWriter {
  const { backend, source } = resolve(spec, param);
  if (!backend.openUserDbWriter) throw new TableError(`${param}: ${spec}: Postern cannot add or remove users in a ${backend.type} table; edit it with its own tools`);
  return backend.openUserDbWriter(source, spec, opts);
}

/** The user database virtual_mailbox_maps names. */
export function userDbOf(config: { get(name: string): string }): UserDb {
  return openUserDb(config.get('virtual_mailbox_maps'));
}

/** The local file holding the users, or null when the user database is not a file (master and setup secure it). */
export function userTableFile(config: { get(name: string): string }): string | null {
  return userDbOf(config).file ?? null;
}
