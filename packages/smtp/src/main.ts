/**
 * smtp: the delivery client. qmgr hands it a queue file and a recipient group;
 * it reads the message (never writes the queue), delivers it over LMTP to a
 * Unix socket or TCP server (as `lmtp`: our local, or Dovecot) or over SMTP to
 * the world (as `smtp`), logs one line per recipient and answers qmgr with
 * each recipient's result.
 */
import {
  runService, ServiceContext, RunningService, readQueueFile, delaySince, serveRequests,
  DeliveryRequest, DeliveryReply, DeliveryResult, validate, deliveryRequest,
} from '@postern/common';
import { deliverByLmtp, lmtpDestination } from './lmtp.js';
import { deliverRemote, DeadHosts } from './remote.js';
import { startReportTimer } from './tlsrpt-report.js';

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log, spool } = ctx;
  const lmtpMode = ctx.command === 'lmtp';

  async function deliver(req: DeliveryRequest, dead: DeadHosts): Promise<DeliveryResult[]> {
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
      const rcpt = req.recipients.find((x) => x.index === r.index);
      log.info({ queue_id: req.queue_id, to: `<${rcpt?.address}>`, relay: r.relay ?? 'none', delay: delaySince(info.envelope.arrival),
        dsn: r.dsn, status: r.status, tls: r.tls?.tls || undefined }, `${r.status} (${r.reason})`);
    }
    return results;
  }

  /**
   * Requests from qmgr, one at a time on a connection, as many as it sends (qmgr
   * keeps the connection for the next message; an old-style client sends one and closes).
   * On stop an idle connection is dropped; one in the middle of a delivery finishes it first.
   */
  const server = serveRequests<DeliveryRequest, DeliveryReply, undefined>({
    many: true,
    check: (raw) => validate(deliveryRequest, raw),
    log,
    logFields: { socket: `private/${ctx.name}` },
    async answer(req) {
      // qmgr's dead-destination table: hosts to skip in, hosts found dead out
      const skip = new Set<string>(req.skip ?? []);
      const found: string[] = [];
      const dead: DeadHosts = { isDead: (k) => skip.has(k), markDead: (k) => { skip.add(k); found.push(k); } };
      return { results: await deliver(req, dead), dead: found };
    },
    failure(error) {
      log.error({ err: error }, 'delivery request failed');
      return { error };
    },
  });

  // TLS-RPT: the finished days' reports (docs/tlsrpt.md); lmtp has no TLS policies to report on
  const stopReports = lmtpMode ? () => undefined : startReportTimer(ctx.config, spool.root, log);
  return {
    listen: (h) => server.listen(h),
    stop: () => { stopReports(); return server.stop(); },
  };
}

runService('smtp', start);
