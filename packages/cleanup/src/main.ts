/**
 * cleanup: turns an envelope and a stream of message bytes into a durable
 * queue file in incoming/ (adding our Received: header, expanding aliases,
 * DKIM-signing submitted mail), tells its client (smtpd, pickup, qmgr's
 * notifications) the queue id only once the file is durable, then wakes qmgr.
 * Never talks to the network.
 */
import addressparser from 'nodemailer/lib/addressparser';
import {
  runService, ServiceContext, RunningService, QueueFileWriter, Envelope,
  newQueueId, rfc5322Date, headerSafe, NetworkList, AliasMaps, MainConfig, StatusRecord,
  validate, SchemaError, smtpdMessageRequest, localMessageRequest, afterBodyRequest, SenderLogins, TableUnavailable, localUserOwnsAddress,
  serveFrames, refuseInvalid, FrameConnection, CleanupReply, QmgrTrigger, RequestConnection, ConnectionClosed, Logger,
  milterEditsRequest, MilterEditsRequest, AfterBodyRequest, milterSettings,
} from '@postern/common';
import { ScratchBody, rewriteForMilters } from './milter-edits.js';
import { expandRecipients } from './aliases.js';
import { HeaderSection, HeaderEdit, HeaderSummary } from './header-section.js';
import { missingHeaders } from './header-fixup.js';
import { forgedAuthResults, incomingVerdicts } from './headers.js';
import { DkimKeyStore, signQueuedMessage } from './dkim.js';
import { failureReply, drainMessage } from './write-error.js';
import { CleanupMilters, MilterResult } from './milter.js';

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

/**
 * Which socket a request came in on: `smtpd` is private/cleanup (smtpd's group),
 * `local` is private/cleanup.local (the queue owner: pickup, qmgr's notifications).
 * The socket, never the frame, says this (docs/security.md).
 */
export type Clients = 'smtpd' | 'local';

/** The envelope from a checked request: only what that socket's clients may say, origin from the socket. */
function envelopeFrom(raw: unknown, clients: Clients, config: MainConfig): Envelope {
  const base = { id: newQueueId(), arrival: Date.now() };
  const limit = config.int('smtpd_recipient_limit');
  if (clients === 'smtpd') {
    const { envelope: e } = validate(smtpdMessageRequest(limit), raw);
    return { ...base, sender: e.sender, recipients: e.recipients, origin: 'smtpd', client: e.client, protocol: e.protocol,
      tls: e.tls, ...(e.sasl !== undefined ? { sasl: e.sasl } : {}), ...(e.dsn ? { dsn: e.dsn } : {}),
      ...(e.requireTls ? { requireTls: true } : {}) };
  }
  const { envelope: e } = validate(localMessageRequest(), raw);
  return { ...base, ...e };
}

/** A refusal of the whole message: smtpd's client gets it as the reply to DATA; local mail is bounced with it. */
interface Refusal { code: number; dsn: string; text: string; log: string }

/**
 * Mail sent as a domain must come from someone who owns the From: address
 * before we sign for that domain (DKIM, docs/dkim.md). Returns the first
 * From: address the submitter does not own, or null.
 */
async function unownedFrom(env: Envelope, summary: HeaderSummary | null, config: MainConfig): Promise<string | null> {
  let owns: ((a: string) => boolean | Promise<boolean>) | null = null;
  // smtpd_sender_login_maps may be a database: TableUnavailable goes up and the message is refused with 451 4.3.0
  if (env.origin === 'smtpd' && env.sasl) owns = (a) => new SenderLogins(config).owns(env.sasl!, a);
  else if (env.origin === 'pickup' && Number.isInteger(env.uid)) {
    // as pickup decides who may set any sender: root and the queue owner (this process's uid)
    const who = { uid: env.uid!, user: env.user ?? String(env.uid), trusted: env.uid === 0 || env.uid === process.getuid!() };
    const myorigin = config.get('myorigin');
    // a bare login is login@$myorigin, as Postfix's append_at_myorigin makes it (cron writes "From: user")
    owns = (a) => localUserOwnsAddress(who, a.includes('@') ? a : `${a}@${myorigin}`, { myorigin, myhostname: config.get('myhostname') });
  }
  if (!owns) return null; // mynetworks and our own notifications: signed as configured
  for (const value of summary?.from ?? []) {
    for (const a of addressparser(value, { flatten: true })) if (a.address && !(await owns(a.address))) return a.address;
  }
  return null;
}

/**
 * cleanup's trigger to qmgr, on one kept connection (a connection per message cost
 * both ends a connect, an accept and a close: bench/README.md, December 2026). At
 * most one trigger is in flight; the files queued meanwhile share the next one, sent
 * when its reply comes. qmgr's reply comes after it has started (or marked for
 * another round) a scan of incoming/ begun after the trigger arrived, so every file
 * renamed into incoming/ before its trigger was sent is seen.
 */
export class QmgrWaker {
  private conn: RequestConnection | null = null;
  private sending = false;
  /** Files queued while a trigger was in flight: the first id (for the log) and how many. */
  private waiting: { first: string; count: number } | null = null;

  constructor(private readonly socketPath: string, private readonly log: Logger, private readonly timeoutMs = 5000) {}

  wake(id: string): void {
    if (this.sending) {
      if (this.waiting) this.waiting.count++; else this.waiting = { first: id, count: 1 };
      return;
    }
    void this.send({ first: id, count: 1 });
  }

  close(): void { this.conn?.close(); this.conn = null; }

  private async send(batch: { first: string; count: number }): Promise<void> {
    this.sending = true;
    const trigger: QmgrTrigger = { type: 'trigger', queue_id: batch.first };
    try {
      try {
        await this.connection().then((c) => c.request(trigger, this.timeoutMs));
      } catch (e) {
        // a kept connection qmgr closed (it restarted) before the trigger got through: once more, on a new one
        if (!(e instanceof ConnectionClosed)) throw e;
        this.conn = null;
        await this.connection().then((c) => c.request(trigger, this.timeoutMs));
      }
    } catch (e) {
      this.conn?.close();
      this.conn = null;
      this.log.warn({ queue_id: batch.first, ...(batch.count > 1 ? { messages: batch.count } : {}), err: (e as Error).message },
        'could not wake qmgr; it will find the file on its next scan');
    } finally {
      this.sending = false;
      const next = this.waiting;
      this.waiting = null;
      if (next) void this.send(next);
    }
  }

  private async connection(): Promise<RequestConnection> {
    if (this.conn && !this.conn.dead) return this.conn;
    const conn = await RequestConnection.connect(this.socketPath, this.timeoutMs);
    conn.socket.unref(); // an idle trigger link must not keep cleanup alive at stop
    this.conn = conn;
    return conn;
  }
}

/** A milter said "try again later" to local mail: pickup keeps the maildrop file. */
class MilterTempfail extends Error {
  constructor(readonly result: MilterResult) {
    const o = result.outcome;
    super(o.action === 'tempfail' ? `milter: ${o.reply.code} ${o.reply.enhanced} ${o.reply.text}` : 'milter: 451 4.7.1 Service unavailable - try again later');
  }
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
  // built once per configuration (ctx.config is a new object after a reload), not per message
  let aliases: { config: MainConfig; maps: AliasMaps } | null = null;
  const aliasMaps = (config: MainConfig): AliasMaps => {
    if (aliases?.config !== config) aliases = { config, maps: new AliasMaps(config) };
    return aliases.maps;
  };
  const waker = new QmgrWaker(spool.privateSocket('qmgr'), log);
  const wakeQmgr = (id: string) => waker.wake(id);

  /** One message; true when it was queued and the client may send the next one on the same connection (smtpd keeps it). */
  async function handle(conn: FrameConnection): Promise<boolean> {
    // master names the queue owner's socket; the other one is smtpd's
    const clients: Clients = conn.clients === 'local' ? 'local' : 'smtpd';
    const { reader } = conn;
    const reply = (r: CleanupReply) => conn.writer.json(r);
    let file: QueueFileWriter | null = null;
    let milters: CleanupMilters | null = null;
    let ended = false; // the client sent the whole message (E) or gave up (A)
    let queueId: string | undefined;
    let scratch: ScratchBody | null = null;
    try {
      let env: Envelope;
      const first = await conn.next();
      if (!first) return false; // connected and went away, or we are stopping: nothing was asked
      // the configuration as the message begins: on a kept connection a reload may have come since the last one
      const config = ctx.config;
      try {
        if (first.type !== 'J') throw new Error(`expected a JSON frame, got ${first.type}`);
        env = envelopeFrom(first.json, clients, config);
      } catch (e) {
        if (!(e instanceof SchemaError)) throw e;
        // a client that sends what it may not is refused whole: nothing of it is queued
        await refuseInvalid(conn, log, e, { queue_id: 'NOQUEUE', socket: clients });
        return false;
      }
      queueId = env.id;
      // smtpd with milters asks for the id at once: its milters get it as the i macro
      if (clients === 'smtpd' && (first.json as { want_id?: unknown }).want_id === true) await conn.writer.json({ type: 'queue-id', queue_id: env.id });
      const given = env.recipients;
      const hostname = config.get('myhostname');
      // Received: names the recipient as the client gave it, not where its aliases lead
      const received = receivedHeader(env, hostname);
      const expanded = await expandRecipients(env.recipients, aliasMaps(config), log, env.id);
      env.recipients = expanded.recipients;
      file = await QueueFileWriter.create(spool, env);
      file.addStatus(expanded.statuses);
      await file.write(Buffer.from(received));
      // non_smtpd_milters: sendmail's mail (pickup) only, never our own bounces and notices (Postfix's rule)
      const milterList = env.origin === 'pickup' ? milterSettings(config, 'non_smtpd_milters') : [];
      if (milterList.length) milters = await CleanupMilters.open(milterList, env, config, log, spool.root);
      const submission = isSubmission(env, mynetworks());
      const edits: HeaderEdit[] = [];
      if (env.origin === 'smtpd' || env.origin === 'pickup') {
        // RFC 8601 5: an Authentication-Results: claiming our name that arrives with the message is forged;
        // X-Spam-* and X-Postern-Quarantine: are ours alone, and ours come in the after-body frame
        edits.push({ drop: forgedAuthResults(hostname) }, { drop: incomingVerdicts() });
      }
      if (submission) {
        edits.push({ add: (s) => missingHeaders(s, env.id, new Date(env.arrival), hostname, rfc5322Date(new Date(env.arrival))) });
      }
      // held always: the hop count and the From: check need the header section
      const header = new HeaderSection(edits, config.int('header_size_limit'));
      const put = async (bufs: Buffer[]) => { for (const b of bufs) { await file!.write(b); await milters?.push(b); } };
      // smtpd's milters (docs/milter.md): a replacement body, then their edits, after the message
      let milter: MilterEditsRequest | null = null;
      let headerEnded = false;
      const endHeader = async () => { if (!headerEnded) { headerEnded = true; await put(header.end()); } };
      const afterBody: AfterBodyRequest[] = [];
      const refuse = async (e: SchemaError) => {
        await file!.abort();
        file = null;
        await scratch?.remove();
        await refuseInvalid(conn, log, e, { queue_id: env.id, socket: clients });
      };
      for (;;) {
        const f = await reader.next();
        if (!f) throw new Error('sender went away before the end of the message');
        if (f.type === 'D' && scratch) await scratch.write(f.data);
        else if (f.type === 'D' && !milter) await put(header.push(f.data));
        else if (f.type === 'J' && clients === 'smtpd' && (f.json?.type === 'milter-body' || f.json?.type === 'milter') && !milter) {
          await endHeader();
          if (f.json.type === 'milter-body') {
            if (Object.keys(f.json).length !== 1) { await refuse(new SchemaError('milter-body', 'no fields allowed')); return false; }
            scratch ??= new ScratchBody(`${spool.tempPathOf(env.id)}.body`);
            await scratch.start();
          } else {
            try { milter = validate(milterEditsRequest(config.int('smtpd_recipient_limit')), f.json, 'milter'); } catch (e) {
              if (!(e instanceof SchemaError)) throw e;
              await refuse(e);
              return false;
            }
          }
        }
        else if (f.type === 'J' && f.json?.type === 'after-body' && clients === 'smtpd') {
          // what smtpd learnt from the whole message: its own header fields (Authentication-Results:, X-Spam-*) and envelope notes
          let after;
          try { after = validate(afterBodyRequest, f.json, 'after-body'); } catch (e) {
            if (!(e instanceof SchemaError)) throw e;
            await file.abort();
            file = null;
            await refuseInvalid(conn, log, e, { queue_id: env.id, socket: clients });
            return false;
          }
          // applied to the file as committed (a milter's edits make a new one)
          afterBody.push(after);
        } else if (f.type === 'E') { ended = true; break; }
        else if (f.type === 'A') {
          ended = true;
          await file.abort();
          file = null;
          await scratch?.remove();
          return false;
        } else throw new Error('unexpected frame inside a message');
      }
      await endHeader();
      let milterRefusal: Refusal | null = null;
      if (milters) {
        // local mail's milters: their verdict now, their edits applied below exactly as smtpd's are
        scratch = new ScratchBody(`${spool.tempPathOf(env.id)}.body`);
        const r = await milters.end(scratch);
        if (!r.bodyReplaced) { await scratch.remove(); scratch = null; }
        const o = r.outcome;
        if (o.action === 'tempfail') {
          // pickup keeps the maildrop file and tries again, as Postfix's does
          log.info({ queue_id: env.id, from: `<${env.sender}>`, milter: o.milter, status: 'tempfail' }, `milter-reject: ${o.reply.code} ${o.reply.enhanced} ${o.reply.text}`);
          throw new MilterTempfail(r);
        }
        if (o.action === 'discard') {
          await file.abort();
          file = null;
          await scratch?.remove();
          log.info({ queue_id: env.id, from: `<${env.sender}>`, milter: o.milter, status: 'discard' }, 'milter-discard: message discarded');
          await reply({ ok: true, queue_id: env.id });
          return true; // the message ended (E): the connection is ready for the next one
        }
        if (o.action === 'reject') {
          // local mail cannot be refused to a client: it is bounced with the milter's reply (Postfix)
          await scratch?.remove();
          scratch = null;
          milterRefusal = { code: o.reply.code, dsn: o.reply.enhanced, text: o.reply.text, log: `milter-reject by ${o.milter}: ${o.reply.code} ${o.reply.enhanced} ${o.reply.text}` };
        } else if (r.edits) {
          try { milter = validate(milterEditsRequest(config.int('smtpd_recipient_limit')), r.edits, 'milter'); } catch (e) {
            if (!(e instanceof SchemaError)) throw e;
            // what a milter asked for does not fit a queue file: not applied half, tried again later
            log.warn({ queue_id: env.id, err: e.message }, 'milter edits refused');
            throw new MilterTempfail(r);
          }
        }
        await milters.close(false);
        milters = null;
      }
      let hold: string | undefined;
      if (milter || scratch) {
        const done = await rewriteForMilters({ spool, old: file, env, given, receivedLength: Buffer.byteLength(received), edits: milter, body: scratch, config, log })
          .finally(() => scratch?.remove());
        if (!done) {
          // every recipient deleted: nothing to deliver, as a discard (Postfix has nothing to queue either)
          await file.abort();
          file = null;
          log.info({ queue_id: env.id, status: 'discard' }, 'milter deleted every recipient; message discarded');
          await reply({ ok: true, queue_id: env.id });
          return true;
        }
        file = done.file;
        env = done.env;
        log.info({ queue_id: env.id, from: `<${env.sender}>`, added: done.added.length ? done.added.map((a) => `<${a}>`).join(',') : undefined,
          deleted: done.deleted.length ? done.deleted.map((a) => `<${a}>`).join(',') : undefined, headers: milter?.headers?.length || undefined,
          body_replaced: scratch ? true : undefined }, 'milter changes applied');
        hold = milter?.hold;
      }
      for (const after of afterBody) {
        if (after.headers) file.addPrependedHeaders(Buffer.from(after.headers));
        if (after.notes && Object.keys(after.notes).length) file.addEnvelopeNotes(after.notes);
      }
      if (header.removed.length) log.info({ queue_id: env.id, removed: header.removed.map((h) => h.slice(0, 200)) }, 'removed Authentication-Results: claiming our host name, or X-Spam-*, X-Postern-Quarantine: from outside');
      if (header.added.length) log.info({ queue_id: env.id, added: header.added.map((h) => h.slice(0, h.indexOf(':'))).join(',') }, 'added missing headers');
      const summary = header.summary;
      if (summary?.truncated) log.warn({ queue_id: env.id, header_size_limit: config.int('header_size_limit') }, 'header section longer than header_size_limit; the rest is treated as body');
      let refusal: Refusal | null = milterRefusal;
      // Postfix's hopcount_limit: this many hops is a mail loop
      const hops = summary?.received ?? 0;
      if (!refusal && hops >= config.int('hopcount_limit')) {
        refusal = { code: 554, dsn: '5.4.6', text: 'Error: too many hops', log: `too many hops (${hops} Received: header fields)` };
      }
      // only mail whose From: the submitter owns is signed
      let sign = submission;
      const notOwned = submission && !refusal ? await unownedFrom(env, summary, config) : null;
      if (notOwned) {
        sign = false;
        const owner = env.sasl ? `user ${env.sasl}` : `local user ${env.user ?? env.uid}`;
        // refused for a login and for a local uid alike (issue 8 item 3); local mail is bounced to its sender below
        if (config.bool('smtpd_reject_header_from_mismatch')) {
          refusal = { code: 550, dsn: '5.7.1', text: `<${notOwned}>: From: address rejected: not owned by ${owner}`, log: `From: <${notOwned}> not owned by ${owner}` };
        } else log.warn({ queue_id: env.id, header_from: `<${notOwned}>`, sasl_username: env.sasl, uid: env.uid }, `From: address not owned by ${owner}; not DKIM signing`);
      }
      if (refusal && env.origin === 'smtpd') {
        await file.abort();
        file = null;
        log.info({ queue_id: 'NOQUEUE', from: `<${env.sender}>`, client: env.client ? `${env.client.name}[${env.client.address}]` : undefined,
          sasl_username: env.sasl, dsn: refusal.dsn, status: 'reject' }, `reject: ${refusal.code} ${refusal.dsn} ${refusal.text}: ${refusal.log}`);
        await reply({ ok: false, error: refusal.text, code: refusal.code, dsn: refusal.dsn });
        return false;
      }
      if (refusal) {
        // pickup and qmgr cannot pass a refusal on: the message is queued already bounced, and qmgr returns it to the sender
        const done = new Set(expanded.statuses.map((st) => (st.type === 'rcpt' ? st.index : -1)));
        const bounced: StatusRecord[] = env.recipients.map((_, index) => index).filter((i) => !done.has(i))
          .map((index) => ({ type: 'rcpt', index, status: 'bounced', dsn: refusal!.dsn, reason: `${refusal!.code} ${refusal!.dsn} ${refusal!.text}`, at: Date.now() }));
        file.addStatus(bounced);
        sign = false;
        log.warn({ queue_id: env.id, from: `<${env.sender}>`, dsn: refusal.dsn, status: 'bounced' }, `message bounced: ${refusal.log}`);
      }
      // only submitted mail is signed, and only its Message-ID is known for the log
      const fixed = submission ? header : null;
      if (sign) await signQueuedMessage(file, env, fixed!.summary, config.get('dkim_signing_table'), dkimKeys, log, config.get('dkim_key_directory'));
      await file.commit(hold !== undefined ? 'hold' : 'incoming');
      if (hold !== undefined) log.info({ queue_id: env.id, reason: hold, status: 'hold' }, `milter-hold: ${hold}`);
      log.info({ queue_id: env.id, from: `<${env.sender}>`, size: file.messageSize, nrcpt: env.recipients.length,
        client: env.client ? `${env.client.name}[${env.client.address}]` : undefined,
        message_id: fixed?.summary?.messageId ?? fixed?.added.find((h) => /^(Resent-)?Message-ID:/.test(h))?.replace(/^[^:]*:\s*/, '') }, 'queued');
      file = null;
      await reply({ ok: true, queue_id: env.id });
      if (hold === undefined) wakeQmgr(env.id);
      return true;
    } catch (e) {
      if (!(e instanceof MilterTempfail)) log.error({ queue_id: queueId ?? 'NOQUEUE', err: (e as Error).message }, 'message not queued');
      await milters?.close(true).catch(() => undefined);
      if (file) await file.abort();
      await scratch?.remove();
      // a write error midway: let the client finish sending so it reads this reply
      if (!ended) await drainMessage(reader);
      // a table that cannot answer (aliases, sender logins, DKIM keys in a database): Postfix's
      // cleanup answer, 451 4.3.0; smtpd passes it on, pickup and qmgr keep the message and retry
      const answer = e instanceof TableUnavailable ? { ok: false as const, error: 'Temporary lookup failure', code: 451, dsn: '4.3.0' } : failureReply(e);
      await reply(answer).catch(() => undefined);
    }
    return false;
  }

  const server = serveFrames({ serve: async (conn) => { while (await handle(conn)); } });
  return {
    listen: (h, info) => server.listen(h, info),
    stop: async () => { await server.stop(); waker.close(); },
  };
}

runService('cleanup', start);
