/**
 * `sqlite:/etc/postern/NAME.cf`: an SQLite table (Postfix's sqlite_table(5)
 * file: `dbpath`, `query`, ...; sql-cf.ts). Node 20 has no built-in SQLite and
 * a native module would have to be compiled at install time, so each query
 * runs Debian's `sqlite3` shell (the same SQLite library, its locking and
 * WAL) as `sqlite3 -safe -json DBPATH SQL`: the SQL is one argument, never
 * standard input, so no key can become a dot-command, and -safe refuses
 * ATTACH, extensions and file writes. Only proxymap and the CLI run it, and
 * proxymap caches answers, so the process per query costs little
 * (docs/tables.md "Why the sqlite3 shell").
 */
import * as fs from 'node:fs';
import { execFile } from 'node:child_process';
import { SqlCf, SqlDriver, SqlResult, sqlBackend } from './sql-cf.js';
import { TableUnavailable } from './types.js';

const SQLITE3 = process.env.POSTERN_SQLITE3 || 'sqlite3';

class SqliteDriver implements SqlDriver {
  constructor(private readonly cf: SqlCf) {}

  query(sql: string): Promise<SqlResult> {
    const db = this.cf.dbpath;
    if (!db.startsWith('/')) return Promise.reject(new TableUnavailable(`${this.cf.file}: dbpath "${db}" is not an absolute path`));
    // sqlite3 would create a missing database: a typo must fail, not answer "no such user"
    if (!fs.existsSync(db)) return Promise.reject(new TableUnavailable(`${this.cf.file}: database ${db} does not exist`));
    const write = /^\s*(insert|update|delete)\b/i.test(sql);
    const text = write ? `${sql.replace(/;\s*$/, '')}; SELECT changes() AS postern_changes` : sql;
    return new Promise((resolve, reject) => {
      execFile(SQLITE3, ['-safe', '-bail', '-json', '-cmd', '.timeout 5000', db, text], { timeout: 15000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (err) {
          const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'the sqlite3 program is not installed (Debian package "sqlite3")' : String(stderr).trim() || err.message;
          return reject(new TableUnavailable(`${this.cf.file}: ${why}`));
        }
        // one JSON array per statement that returned rows; none for no rows
        const rows: Record<string, unknown>[] = [];
        for (const chunk of String(stdout).split(/\n(?=\[)/)) if (chunk.trim()) rows.push(...JSON.parse(chunk));
        if (write) {
          const n = Number(rows.pop()?.postern_changes ?? 0);
          return resolve({ rows: [], rowCount: n });
        }
        resolve({ rows, rowCount: rows.length });
      });
    });
  }

  async end(): Promise<void> { /* no connection is kept */ }
}

export const sqlite = sqlBackend('sqlite', (cf) => new SqliteDriver(cf));
