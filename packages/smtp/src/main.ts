/**
 * smtp: the delivery client. qmgr hands it a queue file and a recipient group;
 * it reads the message (never writes the queue), delivers it over LMTP to a
 * Unix socket or TCP server (as `lmtp`: our local, or Dovecot) or over SMTP to
 * the world (as `smtp`), logs one line per recipient and answers qmgr with
 * each recipient's result.
 */
import * as net from 'node:net';
import {
  runService, ServiceContext, RunningService, FrameReader, FrameWriter, readQueueFile, delaySince,
} from '@postern/common';
import { deliverByLmtp, lmtpDestination } from './lmtp.js';
import { deliverRemote, DeadHosts } from './remote.js';
import { DeliveryResult } from './results.js';

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log, spool } = ctx;
  const servers: net.Server[] = [];
  const inFlight = new Set<Promise<void>>();
  const lmtpMode = ctx.command === 'lmtp';

  async function deliver(req: any, dead: DeadHosts): Promise<DeliveryResult[]> {
    // one read of a small file serves both the envelope and the message we send
    const info = await readQueueFile(req.file, { keepMessage: true });
    if (info.envelope.id !== req.queue_id) throw new Error(`${req.file} holds ${info.envelope.id}, not ${req.queue_id}`);
    const timeoutMs = ctx.config.seconds('delivery_timeout') * 1000;
    let results: DeliveryResult[];
    if (lmtpMode) {
      const dest = lmtpDestination(String(req.nexthop), spool, ctx.config.get('queue_directory'));
      const maxIdle = ctx.config.int(req.nexthop === 'local' ? 'local_destination_concurrency_limit' : 'lmtp_destination_concurrency_limit');
      results = await deliverByLmtp(info, dest, req.recipients, { name: ctx.config.get('myhostname'), timeoutMs, maxIdle });
    } else {
      results = await deliverRemote(info, req.nexthop, req.recipients, ctx.config, log, dead, spool.root);
    }
    for (const r of results) {
      const rcpt = req.recipients.find((x: any) => x.index === r.index);
      log.info({ queue_id: req.queue_id, to: `<${rcpt?.address}>`, relay: r.relay ?? 'none', delay: delaySince(info.envelope.arrival),
        dsn: r.dsn, status: r.status, tls: r.tls?.tls || undefined }, `${r.status} (${r.reason})`);
    }
    return results;
  }

  /** Connections waiting for their next request: closed at once when the service stops. */
  const waiting = new Set<net.Socket>();
  let stopping = false;

  /**
   * One connection from qmgr: requests one at a time, as many as it sends (qmgr
   * keeps the connection for the next message; an old-style client sends one and closes).
   */
  async function handle(conn: net.Socket): Promise<void> {
    const reader = new FrameReader(conn);
    const writer = new FrameWriter(conn);
    try {
      while (!stopping) {
        let req: any;
        waiting.add(conn);
        try {
          const f = await reader.next();
          if (!f) return;
          req = f.type === 'J' ? f.json : { type: `${f.type} frame` };
        } finally {
          waiting.delete(conn);
        }
        try {
          if (req.type !== 'deliver') throw new Error(`unknown request ${req.type}`);
          // qmgr's dead-destination table: hosts to skip in, hosts found dead out
          const skip = new Set<string>(Array.isArray(req.skip) ? req.skip.filter((k: unknown) => typeof k === 'string') : []);
          const found: string[] = [];
          const dead: DeadHosts = { isDead: (k) => skip.has(k), markDead: (k) => { skip.add(k); found.push(k); } };
          const results = await deliver(req, dead);
          await writer.json({ results, dead: found });
        } catch (e) {
          log.error({ err: (e as Error).message }, 'delivery request failed');
          await writer.json({ error: (e as Error).message }).catch(() => undefined);
        }
      }
    } catch {
      // the connection broke, or qmgr went away: nothing is owed to it
    } finally {
      conn.end();
    }
  }

  return {
    listen(h) {
      const s = net.createServer((c) => {
        c.on('error', () => undefined);
        const p = handle(c).finally(() => inFlight.delete(p));
        inFlight.add(p);
      });
      s.listen(h as any);
      servers.push(s);
    },
    async stop() {
      stopping = true;
      for (const s of servers) s.close();
      // an idle connection holds no request: drop it; one in the middle of a delivery finishes it first
      for (const c of waiting) c.destroy();
      await Promise.allSettled([...inFlight]);
    },
  };
}

runService('smtp', start);
