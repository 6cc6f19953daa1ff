/**
 * anvil: the client counters every smtpd process shares (Postfix's anvil), so
 * a connection or rate limit holds however many processes serve a listener.
 * Each smtpd keeps one connection here and sends JSON frames, one reply each:
 *
 *   {type:'connect', service, client}     -> {ok, count, rate}
 *   {type:'disconnect', service, client}  -> {ok}
 *   {type:'message'|'recipient', service, client} -> {ok, rate}
 *   {type:'auth', service, client, peek?} -> {ok, rate}  (failed AUTH attempts)
 *   {type:'lookup', service, client}      -> {ok, count, rates}
 *
 * The connections an smtpd registered are released when its link to anvil
 * closes, so a crashed smtpd leaves no phantom connections behind. Holds
 * nothing but counters; needs no privileges.
 */
import * as net from 'node:net';
import { runService, ServiceContext, RunningService, FrameReader, FrameWriter } from '@postern/common';
import { ClientCounters } from './counters.js';

const SWEEP_MS = 60_000;
const MAX_NAME = 200;

type Reply = Record<string, unknown>;

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  const counters = new ClientCounters(() => ctx.config.seconds('anvil_rate_time_unit') * 1000);
  const servers: net.Server[] = [];
  const links = new Set<net.Socket>();
  const sweeper = setInterval(() => counters.sweep(), SWEEP_MS);
  sweeper.unref();

  /** One request; `open` is this link's registered connections, released when it closes. */
  function answer(req: any, open: Map<string, number>): Reply {
    const service = typeof req?.service === 'string' ? req.service : '';
    const client = typeof req?.client === 'string' ? req.client : '';
    if (!service || !client || service.length > MAX_NAME || client.length > MAX_NAME) return { ok: false, error: 'request needs service and client' };
    const key = `${service}:${client}`;
    switch (req.type) {
      case 'connect': {
        open.set(key, (open.get(key) ?? 0) + 1);
        return { ok: true, ...counters.connect(key) };
      }
      case 'disconnect': {
        const n = open.get(key) ?? 0;
        if (n > 0) {
          counters.disconnect(key);
          if (n === 1) open.delete(key); else open.set(key, n - 1);
        }
        return { ok: true };
      }
      case 'message': case 'recipient': case 'auth':
        return { ok: true, rate: counters.event(key, req.type, req.type === 'auth' && req.peek === true) };
      case 'lookup':
        return { ok: true, ...counters.lookup(key) };
      default:
        return { ok: false, error: `unknown request ${JSON.stringify(String(req.type)).slice(0, 40)}` };
    }
  }

  async function serve(conn: net.Socket): Promise<void> {
    const open = new Map<string, number>();
    links.add(conn);
    const reader = new FrameReader(conn);
    const writer = new FrameWriter(conn);
    try {
      for (;;) {
        const f = await reader.next();
        if (!f) break;
        if (f.type !== 'J') throw new Error(`unexpected frame ${f.type}`);
        await writer.json(answer(f.json, open));
      }
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'anvil client link failed');
    } finally {
      links.delete(conn);
      // the smtpd went away (or restarted): its connections are no longer open
      for (const [key, n] of open) for (let i = 0; i < n; i++) counters.disconnect(key);
      conn.destroy();
    }
  }

  return {
    listen(h) {
      const server = net.createServer((conn) => {
        conn.on('error', () => undefined);
        void serve(conn);
      });
      server.listen(h as any);
      servers.push(server);
      log.info({ rate_time_unit: ctx.config.get('anvil_rate_time_unit') }, 'anvil ready');
    },
    async stop() {
      clearInterval(sweeper);
      for (const s of servers) s.close();
      for (const c of links) c.destroy();
    },
  };
}

runService('anvil', start);
