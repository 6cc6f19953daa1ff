/**
 * smtp: the delivery client. qmgr hands it a queue file and a recipient group;
 * it reads the message (never writes the queue), delivers it over LMTP to a
 * local socket (as `lmtp`) or over SMTP to the world (as `smtp`), logs one
 * line per recipient and answers qmgr with each recipient's result.
 */
import * as net from 'node:net';
import {
  runService, ServiceContext, RunningService, FrameReader, FrameWriter, readQueueFile, delaySince,
} from '@postern/common';
import { deliverByLmtp } from './lmtp.js';
import { deliverRemote } from './remote.js';
import { DeliveryResult } from './results.js';

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log, spool } = ctx;
  const servers: net.Server[] = [];
  const inFlight = new Set<Promise<void>>();
  const lmtpMode = ctx.command === 'lmtp';

  async function deliver(req: any): Promise<DeliveryResult[]> {
    const info = await readQueueFile(req.file);
    if (info.envelope.id !== req.queue_id) throw new Error(`${req.file} holds ${info.envelope.id}, not ${req.queue_id}`);
    const timeoutMs = ctx.config.seconds('delivery_timeout') * 1000;
    let results: DeliveryResult[];
    if (lmtpMode) {
      if (!/^[a-z][a-z0-9_-]*$/.test(req.nexthop)) throw new Error(`bad LMTP next hop "${req.nexthop}"`);
      results = await deliverByLmtp(info, spool.privateSocket(req.nexthop), `${req.nexthop}[private/${req.nexthop}]`,
        req.recipients, { name: ctx.config.get('myhostname'), timeoutMs });
    } else {
      results = await deliverRemote(info, req.nexthop, req.recipients, ctx.config, log);
    }
    for (const r of results) {
      const rcpt = req.recipients.find((x: any) => x.index === r.index);
      log.info({ queue_id: req.queue_id, to: `<${rcpt?.address}>`, relay: r.relay ?? 'none', delay: delaySince(info.envelope.arrival),
        dsn: r.dsn, status: r.status }, `${r.status} (${r.reason})`);
    }
    return results;
  }

  async function handle(conn: net.Socket): Promise<void> {
    const reader = new FrameReader(conn);
    const writer = new FrameWriter(conn);
    try {
      const req = await reader.json();
      if (req.type !== 'deliver') throw new Error(`unknown request ${req.type}`);
      const results = await deliver(req);
      await writer.json({ results });
    } catch (e) {
      log.error({ err: (e as Error).message }, 'delivery request failed');
      await writer.json({ error: (e as Error).message }).catch(() => undefined);
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
      for (const s of servers) s.close();
      await Promise.allSettled([...inFlight]);
    },
  };
}

runService('smtp', start);
