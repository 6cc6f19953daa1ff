/**
 * proxymap: the one process that reads database-backed tables (pgsql:,
 * sqlite:) for every service of this host, as Postfix's proxymap(8). It alone
 * reads the .cf files with the database password and holds the connections
 * (a pool of two per file); smtpd, cleanup, local and smtp ask it over
 * private/proxymap (tables/proxy-client.ts). Answers, "no such key" included,
 * are cached for proxymap_cache_ttl; failures are never cached, so a database
 * back up is used at the next request. It serves only the tables main.cf or
 * master.cf name (Postfix's proxy_read_maps), so a compromised client cannot
 * make it open other files.
 */
import * as net from 'node:net';
import { execFileSync } from 'node:child_process';
import {
  runService, ServiceContext, RunningService, FrameReader, FrameWriter, openTable, openUserDb, TableUnavailable,
  closeSqlTables, loadMasterCf, lookupSystemUser, ProxyOp,
} from '@postern/common';

const OPS: ProxyOp[] = ['lookup', 'exists', 'credentials', 'userInfo'];

/** Every `type:source` a parameter of main.cf or master.cf names: the tables proxymap may open. */
function allowedSpecs(ctx: ServiceContext): Set<string> {
  const values: string[] = [];
  for (const [name] of ctx.config.explicit()) {
    try { values.push(ctx.config.get(name)); } catch { /* reported by its own service */ }
  }
  try {
    for (const e of loadMasterCf(ctx.configDir)) for (const v of e.overrides.values()) values.push(v);
  } catch { /* master checked it at start */ }
  return new Set(values.flatMap((v) => v.split(/[\s,]+/)).map((t) => t.replace(/^proxy:/, '')).filter((t) => /^(pgsql|sqlite):/.test(t)));
}

/**
 * The socket's group can hold only one account of the four clients (smtpd,
 * cleanup, local, smtp); the other two get an ACL entry each, set here by the
 * socket's owner (proxymap's account), so no other local user can connect.
 */
function grantClients(ctx: ServiceContext): void {
  // serviceAccounts() answers "unprivileged" here (we are no longer root): ask by name
  if (ctx.config.bool('unprivileged')) return;
  const clients = [ctx.config.get('mailbox_user'), ctx.config.get('relay_user')].map((n) => lookupSystemUser(n));
  if (clients.some((u) => !u || u.uid === process.getuid!())) return; // a sandbox: everyone is us
  const sock = ctx.spool.privateSocket(ctx.name);
  try {
    execFileSync('setfacl', ['-m', clients.map((u) => `u:${u!.uid}:rw`).join(','), sock], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    ctx.log.error({ socket: sock, err: String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim() }, 'cannot let local and smtp reach proxymap');
  }
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const servers: net.Server[] = [];
  let ttl = ctx.config.seconds('proxymap_cache_ttl') * 1000;
  let allowed = allowedSpecs(ctx);
  const cache = new Map<string, { value: unknown; expires: number }>();

  async function answer(op: ProxyOp, spec: string, key: string): Promise<unknown> {
    const id = `${op}\0${spec}\0${key.toLowerCase()}`;
    const hit = cache.get(id);
    if (hit && hit.expires > Date.now()) return hit.value;
    let value: unknown;
    if (op === 'lookup') value = await openTable(spec)!.lookup(key);
    else {
      const db = openUserDb(spec);
      value = op === 'exists' ? await db.exists(key) : op === 'credentials' ? await db.credentials(key) : await db.userInfo(key);
    }
    if (ttl > 0) {
      if (cache.size > 10000) cache.clear(); // bounded: a flood of random keys cannot grow it
      cache.set(id, { value, expires: Date.now() + ttl });
    }
    return value;
  }

  async function handle(conn: net.Socket): Promise<void> {
    const writer = new FrameWriter(conn);
    let req: any;
    try {
      conn.setTimeout(30000, () => conn.destroy());
      req = await new FrameReader(conn).json();
      if (!OPS.includes(req?.op) || typeof req.spec !== 'string' || typeof req.key !== 'string') throw Object.assign(new Error('expected {op, spec, key}'), { permanent: true });
      if (!allowed.has(req.spec)) throw Object.assign(new Error(`table ${req.spec} is not named in main.cf or master.cf`), { permanent: true });
      await writer.json({ ok: true, value: await answer(req.op, req.spec, req.key) });
    } catch (e) {
      const err = e as Error & { permanent?: boolean };
      const unavailable = !err.permanent;
      ctx.log.warn({ op: req?.op, table: req?.spec, err: err.message }, 'table lookup failed');
      await writer.json({ ok: false, unavailable, error: err.message }).catch(() => undefined);
    } finally {
      conn.end();
    }
  }
  return {
    listen(h) {
      const s = net.createServer((c) => { c.on('error', () => undefined); void handle(c); });
      s.listen(h as any, () => grantClients(ctx));
      servers.push(s);
    },
    reload() {
      // a table named since start becomes servable; cached answers go, as after a table change
      ttl = ctx.config.seconds('proxymap_cache_ttl') * 1000;
      allowed = allowedSpecs(ctx);
      cache.clear();
    },
    async stop() {
      for (const s of servers) s.close();
      await closeSqlTables();
    },
  };
}

runService('proxymap', start);
