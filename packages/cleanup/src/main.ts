/**
 * cleanup: turns an envelope and a stream of message bytes into a durable
 * queue file in incoming/, adds our Received: header, wakes qmgr, and only
 * then tells the sender (smtpd, pickup) the queue id. Never talks to the network.
 */
import * as net from 'node:net';
import {
  runService, ServiceContext, RunningService, FrameReader, FrameWriter, QueueFileWriter, Envelope,
  newQueueId, rfc5322Date, headerSafe, requestJson,
} from '@postern/common';

function receivedHeader(env: Envelope, hostname: string): string {
  const lines: string[] = [];
  if (env.client) {
    const c = env.client;
    lines.push(`Received: from ${headerSafe(c.helo || c.name)} (${headerSafe(c.name)} [${c.address}])`);
    if (env.tls) lines.push(`\t(using ${headerSafe(env.tls)})`);
    if (env.sasl) lines.push(`\t(Authenticated sender: ${headerSafe(env.sasl)})`);
    lines.push(`\tby ${hostname} (Postern) with ${env.protocol || 'SMTP'} id ${env.id}`);
  } else {
    lines.push(`Received: by ${hostname} (Postern, from userid ${headerSafe(env.sasl ?? 'unknown')})`);
    lines.push(`\tid ${env.id}`);
  }
  const rcpt = env.recipients.length === 1 ? `\tfor <${headerSafe(env.recipients[0].address)}>; ` : '\t';
  lines.push(`${rcpt}${rfc5322Date(new Date(env.arrival))}`);
  return lines.join('\r\n') + '\r\n';
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log, spool } = ctx;
  const servers: net.Server[] = [];
  const inFlight = new Set<Promise<void>>();

  function wakeQmgr(id: string): void {
    requestJson(spool.privateSocket('qmgr'), { type: 'trigger', queue_id: id }, 5000)
      .catch((e) => log.warn({ queue_id: id, err: e.message }, 'could not wake qmgr; it will find the file on its next scan'));
  }

  async function handle(conn: net.Socket): Promise<void> {
    const reader = new FrameReader(conn);
    const writer = new FrameWriter(conn);
    let file: QueueFileWriter | null = null;
    try {
      const req = await reader.json();
      if (req.type !== 'message' || !req.envelope) throw new Error('expected a message request');
      const env: Envelope = {
        ...req.envelope,
        id: newQueueId(),
        arrival: Date.now(),
      };
      if (typeof env.sender !== 'string' || !Array.isArray(env.recipients) || !env.recipients.length) {
        throw new Error('envelope needs a sender and at least one recipient');
      }
      file = await QueueFileWriter.create(spool, env);
      await file.write(Buffer.from(receivedHeader(env, ctx.config.get('myhostname'))));
      for (;;) {
        const f = await reader.next();
        if (!f) throw new Error('sender went away before the end of the message');
        if (f.type === 'D') await file.write(f.data);
        else if (f.type === 'E') break;
        else if (f.type === 'A') {
          await file.abort();
          file = null;
          return;
        } else throw new Error('unexpected frame inside a message');
      }
      await file.commit();
      log.info({ queue_id: env.id, from: `<${env.sender}>`, size: file.messageSize, nrcpt: env.recipients.length,
        client: env.client ? `${env.client.name}[${env.client.address}]` : undefined }, 'queued');
      file = null;
      await writer.json({ ok: true, queue_id: env.id });
      wakeQmgr(env.id);
    } catch (e) {
      log.error({ err: (e as Error).message }, 'message not queued');
      if (file) await file.abort();
      await writer.json({ ok: false, error: (e as Error).message }).catch(() => undefined);
    } finally {
      conn.end();
    }
  }

  return {
    listen(h) {
      const server = net.createServer((conn) => {
        conn.on('error', () => undefined);
        const p = handle(conn).finally(() => inFlight.delete(p));
        inFlight.add(p);
      });
      server.listen(h as any);
      servers.push(server);
    },
    async stop() {
      for (const s of servers) s.close();
      await Promise.allSettled([...inFlight]);
    },
  };
}

runService('cleanup', start);
