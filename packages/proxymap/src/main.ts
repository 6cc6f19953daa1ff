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
import { execFileSync } from 'node:child_process';
import {
  runService, ServiceContext, RunningService, openTable, openUserDb, closeSqlTables, loadMasterCf, lookupSystemUser,
  ProxyOp, serveRequests, validate, proxymapRequest, ProxymapRequest, ProxymapReply,
} from '@postern/common';

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

  /** One request per connection; a refused table or a failed lookup is logged and answered, never thrown. */
  const server = serveRequests<ProxymapRequest, ProxymapReply>({
    timeoutMs: 30000,
    check: (raw) => validate(proxymapRequest, raw),
    async answer(req) {
      try {
        if (!allowed.has(req.spec)) {
          ctx.log.warn({ op: req.op, table: req.spec, err: 'not named in main.cf or master.cf' }, 'table lookup refused');
          return { ok: false, unavailable: false, error: `table ${req.spec} is not named in main.cf or master.cf` };
        }
        return { ok: true, value: await answer(req.op, req.spec, req.key) };
      } catch (e) {
        ctx.log.warn({ op: req.op, table: req.spec, err: (e as Error).message }, 'table lookup failed');
        return { ok: false, unavailable: true, error: (e as Error).message };
      }
    },
    failure: (error) => ({ ok: false, unavailable: false, error }),
    log: ctx.log,
    logFields: { socket: `private/${ctx.name}` },
  });

  return {
    listen(h) {
      server.listen(h);
      grantClients(ctx);
    },
    reload() {
      // a table named since start becomes servable; cached answers go, as after a table change
      ttl = ctx.config.seconds('proxymap_cache_ttl') * 1000;
      allowed = allowedSpecs(ctx);
      cache.clear();
    },
    async stop() {
      await server.stop();
      await closeSqlTables();
    },
  };
}

runService('proxymap', start);
