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
import { runService, ServiceContext, RunningService, serveRequests, AnvilRequest, AnvilReply, validate, anvilRequest } from '@postern/common';
import { ClientCounters } from './counters.js';

const SWEEP_MS = 60_000;

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  const counters = new ClientCounters(() => ctx.config.seconds('anvil_rate_time_unit') * 1000);
  const sweeper = setInterval(() => counters.sweep(), SWEEP_MS);
  sweeper.unref();

  /** One request; `open` is this link's registered connections, released when it closes. */
  function answer(req: AnvilRequest, open: Map<string, number>): AnvilReply {
    const key = `${req.service}:${req.client}`;
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
    }
  }

  /** One link per smtpd process, requests in order; `open` is the connections it registered. */
  const server = serveRequests<AnvilRequest, AnvilReply, Map<string, number>>({
    many: true,
    check: (raw) => validate(anvilRequest, raw),
    log,
    logFields: { socket: `private/${ctx.name}` },
    answer: (req, open) => answer(req, open),
    failure: (error) => ({ ok: false, error }),
    open: () => new Map<string, number>(),
    close(open) {
      // the smtpd went away (or restarted): its connections are no longer open
      for (const [key, n] of open) for (let i = 0; i < n; i++) counters.disconnect(key);
    },
    broken: (e) => log.warn({ err: e.message }, 'anvil client link failed'),
  });

  return {
    listen(h) {
      server.listen(h);
      log.info({ rate_time_unit: ctx.config.get('anvil_rate_time_unit') }, 'anvil ready');
    },
    async stop() {
      clearInterval(sweeper);
      await server.stop();
    },
  };
}

runService('anvil', start);
