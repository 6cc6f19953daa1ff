/**
 * smtpd: the SMTP server on a listener master hands over. Decides who may
 * send what to whom (the session handlers, session.ts), streams the message
 * to cleanup (receiveMessage here), and says 250 only when cleanup reports
 * the queue file durable. Never touches the queue itself. This file is the
 * wiring: listeners, TLS, the shared context, reload and stop.
 */
import * as fs from 'node:fs';
import { SMTPServer, SMTPServerDataStream, SMTPServerSession, SMTPServerOptions } from 'smtp-server';
import {
  runService, ServiceContext, RunningService, MainConfig,
  installEnhancedCodeShim, smtpError, CleanupConnections, headerSafe, MilterEditsRequest, PasswordChecker,
} from '@postern/common';

import { LineEndingCheck } from './line-endings.js';
import { createMessageObservers, MessageObserver } from './message-checks.js';
import { forbidUnauthPipelining } from './pipelining.js';
import { batchReplies } from './reply-batching.js';
import { AnvilClient } from './anvil-client.js';
import { ClientLimits, limitPolicy } from './limits.js';
import { NO_STORAGE } from './queue-space.js';
import { dovecotSaslFor } from './dovecot-sasl.js';
import { buildPolicy } from './policy.js';
import { SessionContext, clients, clientName, sessionHandlers, onPipeliningViolation } from './session.js';
import { dsnOfMessage, dsnOfRecipient } from './dsn.js';
import { milterSessions, MessageMilters, MilterOutcome } from './milters.js';

installEnhancedCodeShim();

function tlsOptions(config: MainConfig): { key?: Buffer; cert?: Buffer } {
  const certFile = config.get('smtpd_tls_cert_file');
  const keyFile = config.get('smtpd_tls_key_file');
  if (config.get('smtpd_tls_security_level') === 'none' || !certFile || !fs.existsSync(certFile)) return {};
  return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) };
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  let policy = buildPolicy(ctx.config);
  // kept connections to cleanup, one per message in flight (bench/README.md: a connection per message was ~15 % of smtpd)
  const cleanup = new CleanupConnections(ctx.spool.privateSocket('cleanup'));
  const anvil = new AnvilClient(ctx.spool.privateSocket('anvil'), log);
  let limitsPolicy = limitPolicy(ctx.config, ctx.name);
  const limits = new ClientLimits(anvil, log, () => limitsPolicy, clientName);
  const servers: SMTPServer[] = [];
  /** smtpd_sasl_type = dovecot: one auth-client connection for the process (dovecot-sasl.ts). */
  let dovecot = dovecotSaslFor(ctx.config, null);
  // the session handlers (session.ts) read what a reload replaces through getters
  const sessionContext: SessionContext = {
    config: () => ctx.config,
    policy: () => policy,
    dovecot: () => dovecot,
    spoolRoot: ctx.spool.root,
    log,
    limits,
    passwords: new PasswordChecker(),
    receiveMessage, // below, hoisted: cleanup's client stays here
  };

  const makeServer = (config: MainConfig): SMTPServer => {
    const tls = tlsOptions(config);
    const wrapper = config.bool('smtpd_tls_wrappermode');
    const tlsRequired = config.get('smtpd_tls_security_level') === 'encrypt' || wrapper;
    const saslEnabled = config.bool('smtpd_sasl_auth_enable');
    if ((tlsRequired || saslEnabled) && !tls.cert) {
      throw new Error(`listener ${ctx.name} needs TLS but ${config.get('smtpd_tls_cert_file')} is missing`);
    }
    // a submission listener (TLS required and AUTH offered) takes mail from authenticated users only
    const authRequired = saslEnabled && tlsRequired;
    const options: SMTPServerOptions = {
      name: config.get('myhostname'),
      banner: config.get('smtpd_banner').replace(/^\S+\s+ESMTP\s*/, ''),
      size: policy.sizeLimit,
      secure: wrapper,
      hideENHANCEDSTATUSCODES: false,
      // RFC 3461 DSN always (as Postfix); RFC 8689 REQUIRETLS, which smtp-server lists only once the session is TLS
      hideDSN: false,
      hideREQUIRETLS: false,
      authOptional: true,
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: false,
      disabledCommands: [...(saslEnabled ? [] : ['AUTH']), ...(tls.cert && !wrapper ? [] : ['STARTTLS'])],
      ...tls,
      minVersion: 'TLSv1.2',
      socketTimeout: config.seconds('smtpd_timeout') * 1000,
      maxCommandLength: config.int('line_length_limit'),
      closeTimeout: 10000,
      disableReverseLookup: true,
      logger: false,
      ...sessionHandlers(sessionContext, { tlsRequired, authRequired }),
    };
    const server = new SMTPServer(options);
    limits.install(server);
    if (config.bool('smtpd_forbid_unauth_pipelining')) {
      forbidUnauthPipelining(server, (s, address, when, input) => onPipeliningViolation(sessionContext, s, address, when, input));
    }
    // last, so it wraps the others' replies too
    batchReplies(server);
    // a failed TLS handshake or a reset socket must not take the process down
    server.on('error', (err) => log.warn({ err: err.message }, 'connection error'));
    return server;
  };

  async function receiveMessage(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const trusted = policy.mynetworks.contains(session.remoteAddress);
    const check = new LineEndingCheck(trusted);
    const sub = await cleanup.open().catch((e) => {
      stream.resume();
      log.error({ err: e.message }, 'cleanup is not reachable');
      throw smtpError(451, '4.3.0', 'Error: queue file write error');
    });
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    let observers: MessageObserver[] = [];
    const milters = milterSessions.get(session);
    let filter: MessageMilters | null = null;
    let queueId: string | undefined;
    let eomSent = false;
    let reusable = false; // cleanup answered and waits for the next envelope
    try {
      const envelope = {
        sender: from,
        recipients: session.envelope.rcptTo.map((r) => ({ address: r.address, ...dsnOfRecipient(r) })),
        // cleanup takes one line of at most 255 characters: a client's odd HELO is cut, not a reason to fail
        client: { address: session.remoteAddress, name: clients.get(session)?.name ?? 'unknown', helo: headerSafe(session.hostNameAppearsAs || '').slice(0, 255) },
        protocol: session.transmissionType,
        tls: session.secure ? describeTls(session) : null,
        sasl: session.user ? String(session.user) : undefined,
        ...dsnOfMessage(session),
      };
      if (milters) {
        // the milters know the message by its queue id (the i macro) from DATA on
        queueId = await sub.envelopeForId(envelope);
        filter = milters.message(queueId);
        await filter.data();
      } else await sub.envelope(envelope);
      observers = createMessageObservers({ session, config: ctx.config, log, trusted: trusted || !!session.user });
      let aborted = false;
      const forward = async (out: Buffer) => {
        for (const o of observers) o.write(out);
        // cleanup first: the milters' replies then hold up the client, not the queue file
        await sub.data(out);
        if (filter) await filter.write(out);
      };
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (aborted) continue; // drain the rest so smtp-server can reply
        const out = check.push(chunk);
        if (check.rejected || stream.sizeExceeded) { aborted = true; await sub.abort(); continue; }
        if (out.length) await forward(out);
      }
      if (!aborted) {
        const tail = check.end();
        if (check.rejected || stream.sizeExceeded) { aborted = true; await sub.abort(); }
        else if (tail.length) await forward(tail);
      }
      if (stream.sizeExceeded) {
        log.info({ queue_id: 'NOQUEUE', client: clientName(session), from, size_limit: policy.sizeLimit, status: 'reject' }, 'reject: message too large');
        throw smtpError(552, '5.3.4', 'Error: message file too big');
      }
      if (check.rejected) {
        log.warn({ queue_id: 'NOQUEUE', client: clientName(session), from, status: 'reject' }, 'reject: bare <CR> or <LF> in message data (SMTP smuggling)');
        throw smtpError(550, '5.5.2', 'Error: bare <CR> or <LF> received; message rejected');
      }
      const verdicts = await Promise.all(observers.map((o) => o.finish()));
      observers = [];
      const rejection = verdicts.find((v) => v.reject)?.reject;
      if (rejection) {
        await sub.abort();
        log.info({ queue_id: 'NOQUEUE', client: clientName(session), from, status: 'reject' }, `reject: END-OF-MESSAGE from ${clientName(session)}: ${rejection.responseCode} ${rejection.message}`);
        throw rejection;
      }
      const headers = verdicts.map((v) => v.headers ?? '').join('');
      const notes = Object.assign({}, ...verdicts.map((v) => v.notes ?? {}));
      if (headers || Object.keys(notes).length) await sub.afterBody({ headers, notes });
      if (filter) {
        // end of message: a replacement body streams on to cleanup as the milter sends it
        eomSent = true;
        const outcome = await filter.finish(() => sub.replaceBody(), (chunk) => sub.data(chunk));
        if (outcome.refuse) {
          await sub.abort();
          throw outcome.refuse;
        }
        if (outcome.discard) {
          await sub.abort();
          log.info({ queue_id: queueId, client: clientName(session), from, milter: outcome.discard.milter, status: 'discard' },
            `milter-discard: END-OF-MESSAGE from ${clientName(session)}: milter triggers DISCARD action`);
          return queueId!;
        }
        const edits = milterEdits(outcome);
        if (edits) await sub.edits(edits);
        if (outcome.quarantine) {
          log.info({ queue_id: queueId, milter: outcome.quarantine.milter, reason: outcome.quarantine.reason },
            `milter-hold: END-OF-MESSAGE from ${clientName(session)}: ${outcome.quarantine.reason || 'milter triggers HOLD action'}`);
        }
      }
      const reply = await sub.finish();
      reusable = reply.ok === true;
      if (!reply.ok && typeof reply.code === 'number' && Number.isInteger(reply.code) && reply.code >= 400 && reply.code < 600
        && typeof reply.dsn === 'string' && /^[45]\.\d{1,3}\.\d{1,3}$/.test(reply.dsn)) {
        // cleanup refused the content (hop count, a From: the login does not own): its answer is the client's
        throw smtpError(reply.code, reply.dsn, String(reply.error));
      }
      if (!reply.ok) {
        log.error({ queue_id: 'NOQUEUE', err: reply.error }, 'cleanup failed to queue the message');
        // a full spool is the client's cue to come back later: Postfix's 452 4.3.1
        if (reply.storage) throw smtpError(NO_STORAGE.code, NO_STORAGE.enhanced, NO_STORAGE.text);
        throw smtpError(451, '4.3.0', 'Error: queue file write error');
      }
      log.info({ queue_id: reply.queue_id, client: clientName(session), sasl_username: session.user ? String(session.user) : undefined }, 'queued');
      return reply.queue_id;
    } catch (e) {
      if ((e as any).responseCode) throw e;
      log.error({ err: (e as Error).message }, 'message transfer to cleanup failed');
      throw smtpError(451, '4.3.0', 'Error: queue file write error');
    } finally {
      for (const o of observers) o.abort();
      cleanup.release(sub, reusable);
      // a message the milters did not see end (too big, smuggling, cleanup failed) is aborted at them
      if (milters) await milters.endMessage(!eomSent).catch(() => undefined);
    }
  }

  return {
    listen(handle) {
      const server = makeServer(ctx.config);
      servers.push(server);
      server.listen(handle as any);
    },
    reload(config) {
      policy = buildPolicy(config);
      dovecot = dovecotSaslFor(config, dovecot);
      limitsPolicy = limitPolicy(config, ctx.name);
      for (const s of servers) {
        // new TLS material and limits apply to new connections
        const tls = tlsOptions(config);
        if (tls.cert) s.updateSecureContext({ cert: tls.cert, key: tls.key });
        (s as any).options.size = policy.sizeLimit;
      }
    },
    stop() {
      cleanup.closeAll();
      return Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => { anvil.close(); dovecot?.close(); });
    },
  };
}

/** The milters' changes as cleanup takes them, or null when there are none (docs/milter.md). */
function milterEdits(o: MilterOutcome): Omit<MilterEditsRequest, 'type'> | null {
  const bare = (a: string) => a.trim().replace(/^<(.*)>$/, '$1');
  const r: Omit<MilterEditsRequest, 'type'> = {};
  const headers: NonNullable<MilterEditsRequest['headers']> = [];
  for (const e of o.edits) {
    switch (e.type) {
      case 'add-header': headers.push({ op: 'add', name: e.name, value: e.value }); break;
      case 'insert-header': headers.push({ op: 'insert', index: e.index, name: e.name, value: e.value }); break;
      case 'change-header': headers.push({ op: 'change', index: e.index, name: e.name, value: e.value }); break;
      case 'add-rcpt': (r.add_recipients ??= []).push(bare(e.address)); break;
      case 'delete-rcpt': (r.delete_recipients ??= []).push(bare(e.address)); break;
      case 'change-from': r.sender = bare(e.address); break;
      default: break;
    }
  }
  if (headers.length) r.headers = headers;
  if (o.quarantine) r.hold = (o.quarantine.reason || `milter ${o.quarantine.milter}`).replace(/[\x00-\x1f\x7f]/g, ' ').slice(0, 255);
  return Object.keys(r).length || o.bodyReplaced ? r : null;
}

function describeTls(session: SMTPServerSession): string {
  const c = (session as any).tlsOptions as { name?: string; version?: string; standardName?: string } | undefined;
  return c ? `${c.version ?? 'TLS'} with cipher ${c.standardName ?? c.name ?? 'unknown'}` : 'TLS';
}

runService('smtpd', start);
