/**
 * `pgsql:/etc/postern/NAME.cf`: a PostgreSQL table (Postfix's pgsql_table(5)
 * file, sql-cf.ts), through `pg` (pure JavaScript). `hosts` are tried in
 * order: `host`, `host:port`, `inet:host:port` or `unix:/socket/dir`. A pool
 * of at most two connections per file and process: only proxymap and the
 * CLI connect, so a host holds few connections however many services run.
 */
import pg from 'pg';
import { SqlCf, SqlDriver, SqlResult, sqlBackend } from './sql-cf.js';
import { TableUnavailable } from './types.js';

function target(h: string): { host: string; port?: number } {
  if (h.startsWith('unix:')) return { host: h.slice(5) };
  const hp = h.replace(/^inet:/, '');
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(hp);
  return m ? { host: m[1], port: Number(m[2]) } : { host: hp };
}

class PgDriver implements SqlDriver {
  private readonly pools: any[];

  constructor(private readonly cf: SqlCf) {
    const hosts = cf.hosts.length ? cf.hosts : ['localhost'];
    this.pools = hosts.map((h) => {
      const pool = new pg.Pool({
        ...target(h), user: cf.user || undefined, password: cf.password || undefined, database: cf.dbname || undefined,
        max: 2, idleTimeoutMillis: 30000, allowExitOnIdle: true, connectionTimeoutMillis: 5000, query_timeout: 10000,
      });
      pool.on('error', () => undefined); // an idle connection dropped by the server: the next query reconnects
      return pool;
    });
  }

  async query(sql: string): Promise<SqlResult> {
    let last: Error | undefined;
    for (const pool of this.pools) {
      try {
        const r = await pool.query(sql);
        return { rows: r.rows ?? [], rowCount: r.rowCount ?? 0 };
      } catch (e) {
        last = e as Error;
        // an SQL error is the query's fault: another host would answer the same
        if ((e as { severity?: string }).severity) throw new TableUnavailable(`${this.cf.file}: ${last.message}`);
      }
    }
    throw new TableUnavailable(`${this.cf.file}: database unreachable: ${last?.message || (last as any)?.code || 'connection failed'}`);
  }

  async end(): Promise<void> {
    await Promise.all(this.pools.map((p) => p.end().catch(() => undefined)));
  }
}

export const pgsql = sqlBackend('pgsql', (cf) => new PgDriver(cf));
