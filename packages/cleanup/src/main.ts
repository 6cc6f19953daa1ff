/**
 * cleanup: turns an envelope and a stream of message bytes into a durable
 * queue file in incoming/, adds our Received: header, wakes qmgr, and only
 * then tells the sender (smtpd, pickup) the queue id. Never talks to the network.
 */
import * as net from 'node:net';
import {
  runService, ServiceContext, RunningService, FrameReader, FrameWriter, QueueFileWriter, Envelope,
  newQueueId, rfc5322Date, headerSafe, requestJson, NetworkList, AliasMaps,
} from '@postern/common';
import { expandRecipients } from './aliases.js';
import { HeaderSection, HeaderEdit } from './header-section.js';
import { missingHeaders } from './header-fixup.js';
import { forgedAuthResults } from './headers.js';
import { DkimKeyStore, signQueuedMessage } from './dkim.js';
import { failureReply, drainMessage } from './write-error.js';

function receivedHeader(env: Envelope, hostname: string): string {
  const lines: string[] = [];
  if (env.client) {
    const c = env.client;
    lines.push(`Received: from ${headerSafe(c.helo || c.name)} (${headerSafe(c.name)} [${c.address}])`);
    if (env.tls) lines.push(`\t(using ${headerSafe(env.tls)})`);
    if (env.sasl) lines.push(`\t(Authenticated sender: ${headerSafe(env.sasl)})`);
    lines.push(`\tby ${hostname} (Postern) with ${env.protocol || 'SMTP'} id ${env.id}`);
  } else {
    // local submission: pickup's envelope carries the maildrop file owner's uid, as Postfix shows it
    const userid = Number.isInteger(env.uid) ? String(env.uid) : headerSafe(env.sasl ?? 'unknown');
    lines.push(`Received: by ${hostname} (Postern, from userid ${userid})`);
    lines.push(`\tid ${env.id}`);
  }
  const rcpt = env.recipients.length === 1 ? `\tfor <${headerSafe(env.recipients[0].address)}>; ` : '\t';
  lines.push(`${rcpt}${rfc5322Date(new Date(env.arrival))}`);
  return lines.join('\r\n') + '\r\n';
}

/**
 * Submitted mail is fixed up and DKIM-signed: an authenticated client, a client
 * in mynetworks, sendmail (pickup), or mail this system wrote itself. Mail
 * from other servers is never changed beyond our Received: header.
 */
function isSubmission(env: Envelope, mynetworks: NetworkList): boolean {
  if (env.sasl || env.origin === 'pickup' || env.origin === 'bounce' || env.origin === 'local') return true;
  return !!env.client && mynetworks.contains(env.client.address);
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log, spool } = ctx;
  const dkimKeys = new DkimKeyStore(log);
  let networks = { spec: '', list: new NetworkList([]) };
  const mynetworks = (): NetworkList => {
    const spec = ctx.config.get('mynetworks'); // ctx.config is replaced on reload
    if (spec !== networks.spec) networks = { spec, list: new NetworkList(ctx.config.list('mynetworks')) };
    return networks.list;
  };
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
    let ended = false; // the client sent the whole message (E) or gave up (A)
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
      const hostname = ctx.config.get('myhostname');
      // Received: names the recipient as the client gave it, not where its aliases lead
      const received = receivedHeader(env, hostname);
      const expanded = await expandRecipients(env.recipients, new AliasMaps(ctx.config), log, env.id);
      env.recipients = expanded.recipients;
      file = await QueueFileWriter.create(spool, env);
      file.addStatus(expanded.statuses);
      await file.write(Buffer.from(received));
      const submission = isSubmission(env, mynetworks());
      const edits: HeaderEdit[] = [];
      // RFC 8601 5: an Authentication-Results: claiming our name that arrives with the message is forged
      if (env.origin === 'smtpd' || env.origin === 'pickup') edits.push({ drop: forgedAuthResults(hostname) });
      if (submission) {
        edits.push({ add: (s) => missingHeaders(s, env.id, new Date(env.arrival), hostname, rfc5322Date(new Date(env.arrival))) });
      }
      // without edits the header section need not be held
      const header = edits.length ? new HeaderSection(edits) : null;
      const put = async (bufs: Buffer[]) => { for (const b of bufs) await file!.write(b); };
      for (;;) {
        const f = await reader.next();
        if (!f) throw new Error('sender went away before the end of the message');
        if (f.type === 'D') await put(header ? header.push(f.data) : [f.data]);
        else if (f.type === 'J' && f.json?.type === 'after-body') {
          // what smtpd learnt from the whole message: headers to add (Authentication-Results:, X-Spam-*) and envelope notes
          if (typeof f.json.headers === 'string' && f.json.headers) file.addPrependedHeaders(Buffer.from(f.json.headers));
          if (f.json.notes && typeof f.json.notes === 'object') file.addEnvelopeNotes(f.json.notes);
        } else if (f.type === 'E') { ended = true; break; }
        else if (f.type === 'A') {
          ended = true;
          await file.abort();
          file = null;
          return;
        } else throw new Error('unexpected frame inside a message');
      }
      if (header) {
        await put(header.end());
        if (header.removed.length) log.info({ queue_id: env.id, removed: header.removed.map((h) => h.slice(0, 200)) }, 'removed Authentication-Results: claiming our host name');
        if (header.added.length) log.info({ queue_id: env.id, added: header.added.map((h) => h.slice(0, h.indexOf(':'))).join(',') }, 'added missing headers');
      }
      // only submitted mail is signed, and only its Message-ID is known for the log
      const fixed = submission ? header : null;
      if (fixed) await signQueuedMessage(file, env, fixed.summary, ctx.config.get('dkim_signing_table'), dkimKeys, log);
      await file.commit();
      log.info({ queue_id: env.id, from: `<${env.sender}>`, size: file.messageSize, nrcpt: env.recipients.length,
        client: env.client ? `${env.client.name}[${env.client.address}]` : undefined,
        message_id: fixed?.summary?.messageId ?? fixed?.added.find((h) => /^(Resent-)?Message-ID:/.test(h))?.replace(/^[^:]*:\s*/, '') }, 'queued');
      file = null;
      await writer.json({ ok: true, queue_id: env.id });
      wakeQmgr(env.id);
    } catch (e) {
      log.error({ queue_id: file?.id, err: (e as Error).message }, 'message not queued');
      if (file) await file.abort();
      // a write error midway: let the client finish sending so it reads this reply
      if (!ended) await drainMessage(reader);
      await writer.json(failureReply(e)).catch(() => undefined);
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
