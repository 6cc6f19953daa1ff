/**
 * smtpd: the SMTP server on a listener master hands over. Decides who may
 * send what to whom, streams the message to cleanup, and says 250 only when
 * cleanup reports the queue file durable. Never touches the queue itself.
 */
import * as fs from 'node:fs';
import { SMTPServer, SMTPServerDataStream, SMTPServerSession, SMTPServerOptions } from 'smtp-server';
import {
  runService, ServiceContext, RunningService, MainConfig, NetworkList,
  installEnhancedCodeShim, smtpError, connectUnix, FrameReader, FrameWriter, UserDb, verifyPassword, userDbOf, localDomains, sharedResolver,
  AliasMaps, SmtpError, loginOwnsAddress, headerSafe,
} from '@postern/common';

import { LineEndingCheck } from './line-endings.js';
import { createMessageObservers, MessageObserver } from './message-checks.js';
import { RestrictionPolicy, restrictionPolicy, SessionClient, checkRecipientNamed } from './restrictions.js';
import { forbidUnauthPipelining } from './pipelining.js';
import { AnvilClient } from './anvil-client.js';
import { ClientLimits, limitPolicy, sleep } from './limits.js';
import { queueSpaceShort, NO_STORAGE } from './queue-space.js';
import { dovecotSaslFor, dovecotCheck } from './dovecot-sasl.js';

installEnhancedCodeShim();

interface Policy {
  hostname: string;
  localDomains: Set<string>;
  mynetworks: NetworkList;
  users: UserDb;
  recipientLimit: number;
  sizeLimit: number;
  restrictions: RestrictionPolicy;
  config: MainConfig;
  /** Opened at the first lookup: a missing table is a temporary failure then, not a crash. */
  aliases?: AliasMaps;
}

function buildPolicy(config: MainConfig, previous?: Policy): Policy {
  const mynetworks = new NetworkList(config.list('mynetworks'));
  const domains = localDomains(config);
  return {
    hostname: config.get('myhostname'),
    localDomains: domains,
    mynetworks,
    restrictions: restrictionPolicy(config, mynetworks, domains),
    users: userDbOf(config), // one per spec and process: a reload keeps it
    recipientLimit: config.int('smtpd_recipient_limit'),
    sizeLimit: config.int('message_size_limit'),
    config,
  };
}

/** Each connection's client, its reverse DNS looked up once (at connect, or when a restriction first needs it). */
const clients = new WeakMap<SMTPServerSession, SessionClient>();

function sessionClient(session: SMTPServerSession, config: MainConfig): SessionClient {
  let c = clients.get(session);
  if (!c) clients.set(session, c = new SessionClient(session.remoteAddress, sharedResolver(config)));
  return c;
}

/** `name[address]`: the forward-confirmed name, or unknown. */
function clientName(session: SMTPServerSession): string {
  return clients.get(session)?.label ?? `unknown[${session.remoteAddress}]`;
}

/** An address in our domains exists when it is a user, an alias, or postmaster@/abuse@ (aliases.ts). */
async function knownRecipient(policy: Policy, address: string): Promise<boolean> {
  if (await policy.users.exists(address)) return true;
  policy.aliases ??= new AliasMaps(policy.config);
  return policy.aliases.accepts(address);
}

function tlsOptions(config: MainConfig): { key?: Buffer; cert?: Buffer } {
  const certFile = config.get('smtpd_tls_cert_file');
  const keyFile = config.get('smtpd_tls_key_file');
  if (config.get('smtpd_tls_security_level') === 'none' || !certFile || !fs.existsSync(certFile)) return {};
  return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) };
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  let policy = buildPolicy(ctx.config);
  const cleanupSocket = ctx.spool.privateSocket('cleanup');
  const anvil = new AnvilClient(ctx.spool.privateSocket('anvil'), log);
  let limitsPolicy = limitPolicy(ctx.config, ctx.name);
  const limits = new ClientLimits(anvil, log, () => limitsPolicy, clientName);
  /** An error reply to MAIL or RCPT waits smtpd_error_sleep_time once the session passed smtpd_soft_error_limit. */
  const replyLater = (session: SMTPServerSession, cb: (err?: Error | null) => void) => (err?: Error | null) => {
    if (!err) return cb();
    void sleep(limits.errorDelay(session)).then(() => cb(err));
  };
  const servers: SMTPServer[] = [];
  /** smtpd_sasl_type = dovecot: one auth-client connection for the process (dovecot-sasl.ts). */
  let dovecot = dovecotSaslFor(ctx.config, null);

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
      onConnect(session, cb) {
        const client = sessionClient(session, ctx.config);
        // anvil first: a flood is turned away before it costs a DNS lookup
        limits.connect(session).then((refused) => {
          if (refused) {
            log.info({ client: clientName(session) }, `connect from ${clientName(session)}`);
            return cb(refused);
          }
          // Postfix names the client before the greeting; mynetworks is trusted and not looked up unless a restriction asks
          const lookup = policy.mynetworks.contains(session.remoteAddress) ? Promise.resolve() : client.lookup();
          lookup.catch((e) => log.error({ err: (e as Error).message }, 'client name lookup failed')).then(() => {
            if (client.identity?.dnsError) log.warn({ client: clientName(session), err: client.identity.dnsError }, `${clientName(session)}: client name lookup failed temporarily`);
            log.info({ client: clientName(session) }, `connect from ${clientName(session)}`);
            cb();
          });
        });
      },
      onClose(session) {
        limits.disconnect(session);
        log.info({ client: clientName(session), tls: session.secure || undefined }, 'disconnect');
      },
      onAuth(auth, session, cb) {
        const fail = async () => {
          // each failure of this client waits longer: a password guesser gets slower, not faster
          const { failures, delayMs } = await limits.authFailed(session);
          log.warn({ client: clientName(session), method: auth.method, sasl_username: auth.username, auth_failures: failures, delay_s: delayMs / 1000 },
            `${clientName(session)}: SASL ${auth.method} authentication failed; reply delayed ${delayMs / 1000}s`);
          await sleep(delayMs);
          cb(smtpError(535, '5.7.8', 'Error: authentication failed'));
        };
        const check = async (): Promise<void> => {
          const refused: SmtpError | null = await limits.authAllowed(session);
          if (refused) return cb(refused);
          if (auth.method !== 'PLAIN' && auth.method !== 'LOGIN') return fail();
          if (dovecot) {
            const verdict = await dovecotCheck(dovecot, auth, session).catch((e: Error) => {
              log.error({ client: clientName(session), method: auth.method, err: e.message }, `${clientName(session)}: SASL ${auth.method}: Dovecot auth unavailable`);
              return null;
            });
            if (!verdict) return cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
            // Dovecot's login name, not what the client typed, is the session's user (sender check, logs)
            return verdict.ok ? cb(null, { user: verdict.user }) : fail();
          }
          let entry;
          try { entry = await policy.users.credentials(auth.username ?? ""); } catch (e) {
            log.error({ err: (e as Error).message }, 'user table unavailable');
            return cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
          }
          if (!entry || !verifyPassword(auth.password ?? '', entry.password)) return fail();
          cb(null, { user: entry.user });
        };
        check().catch((e) => {
          log.error({ err: (e as Error).stack ?? String(e) }, 'authentication check failed');
          cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
        });
      },
      onMailFrom(address, session, done) {
        const cb = replyLater(session, done);
        if (tlsRequired && !session.secure) return cb(smtpError(530, '5.7.0', 'Must issue a STARTTLS command first'));
        if (authRequired && !session.user) return cb(smtpError(530, '5.7.0', 'Authentication required'));
        if (session.user && !loginOwnsAddress(String(session.user), address.address)) {
          // reject_sender_login_mismatch: an authenticated user sends only as an address they own
          log.info({ queue_id: 'NOQUEUE', client: clientName(session), sasl_username: String(session.user), from: address.address, status: 'reject' },
            `reject: MAIL from ${clientName(session)}: 553 5.7.1 <${address.address}>: Sender address rejected: not owned by user ${session.user}`);
          return cb(smtpError(553, '5.7.1', `<${address.address}>: Sender address rejected: not owned by user ${session.user}`));
        }
        const size = Number((address as any).args?.SIZE) || 0;
        queueSpaceShort(ctx.spool.root, size, ctx.config, log).then((short) => {
          if (!short) return limits.mail(session).then((tooMuch) => cb(tooMuch), () => cb());
          log.info({ queue_id: 'NOQUEUE', client: clientName(session), from: address.address, status: 'reject' },
            `reject: MAIL from ${clientName(session)}: ${NO_STORAGE.code} ${NO_STORAGE.enhanced} ${NO_STORAGE.text}`);
          cb(smtpError(NO_STORAGE.code, NO_STORAGE.enhanced, NO_STORAGE.text));
        });
      },
      onRcptTo(address, session, done) {
        const cb = replyLater(session, done);
        const reject = (code: number, enhanced: string, text: string, restriction?: string) => {
          log.info({ queue_id: 'NOQUEUE', client: clientName(session), from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: address.address, proto: session.transmissionType, helo: session.hostNameAppearsAs, dsn: enhanced, restriction, status: 'reject' },
          `reject: RCPT from ${clientName(session)}: ${code} ${enhanced} ${text}`);
          cb(smtpError(code, enhanced, text));
        };
        if (session.envelope.rcptTo.length >= policy.recipientLimit) return reject(452, '4.5.3', 'Error: too many recipients', 'smtpd_recipient_limit');
        const current = policy;
        const checkRecipients = () => checkRecipientNamed(current.restrictions, {
          resolver: sharedResolver(ctx.config),
          knownRecipient: (a) => knownRecipient(current, a).catch((e) => {
            log.error({ err: (e as Error).message }, 'user table unavailable');
            throw e;
          }),
          warn: (fields, msg) => log.warn({ client: clientName(session), ...fields }, msg),
        }, {
          client: sessionClient(session, ctx.config),
          helo: session.hostNameAppearsAs || '',
          sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          recipient: address.address,
          authenticated: !!session.user,
        }).then((r) => (r ? reject(r.rejection.code, r.rejection.enhanced, r.rejection.text, r.restriction) : cb()), (e) => {
          log.error({ err: (e as Error).stack ?? String(e) }, 'restriction check failed');
          reject(451, '4.3.0', 'Error: internal error, try again later');
        });
        // anvil's recipient rate first, then the restriction lists
        limits.recipient(session).then((tooMany) => {
          if (tooMany) return reject(tooMany.responseCode, tooMany.enhanced, tooMany.message.slice(tooMany.enhanced.length + 1), 'smtpd_client_recipient_rate_limit');
          return checkRecipients();
        }, () => checkRecipients());
      },
      onData(stream, session, cb) {
        receiveMessage(stream, session).then((id) => { limits.delivered(session); cb(null, `2.0.0 Ok: queued as ${id}`); }, (err) => cb(err));
      },
    };
    const server = new SMTPServer(options);
    limits.install(server);
    if (config.bool('smtpd_forbid_unauth_pipelining')) {
      forbidUnauthPipelining(server, (session, address, when, input) => {
        const client = clients.get(session)?.label ?? `unknown[${address}]`;
        log.info({ client, status: 'reject', input }, `improper command pipelining ${when} from ${client}: ${JSON.stringify(input)}`);
      });
    }
    // a failed TLS handshake or a reset socket must not take the process down
    server.on('error', (err) => log.warn({ err: err.message }, 'connection error'));
    return server;
  };

  async function receiveMessage(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const trusted = policy.mynetworks.contains(session.remoteAddress);
    const check = new LineEndingCheck(trusted);
    const sock = await connectUnix(cleanupSocket).catch((e) => {
      stream.resume();
      log.error({ err: e.message }, 'cleanup is not reachable');
      throw smtpError(451, '4.3.0', 'Error: queue file write error');
    });
    sock.on('error', () => undefined);
    const writer = new FrameWriter(sock);
    const reader = new FrameReader(sock);
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    let observers: MessageObserver[] = [];
    try {
      await writer.json({
        type: 'message',
        envelope: {
          sender: from,
          recipients: session.envelope.rcptTo.map((r) => ({ address: r.address })),
          // cleanup takes one line of at most 255 characters: a client's odd HELO is cut, not a reason to fail
          client: { address: session.remoteAddress, name: clients.get(session)?.name ?? 'unknown', helo: headerSafe(session.hostNameAppearsAs || '').slice(0, 255) },
          protocol: session.transmissionType,
          tls: session.secure ? describeTls(session) : null,
          sasl: session.user ? String(session.user) : undefined,
        },
      });
      observers = createMessageObservers({ session, config: ctx.config, log, trusted: trusted || !!session.user });
      let aborted = false;
      const forward = async (out: Buffer) => {
        for (const o of observers) o.write(out);
        await writer.data(out);
      };
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (aborted) continue; // drain the rest so smtp-server can reply
        const out = check.push(chunk);
        if (check.rejected || stream.sizeExceeded) { aborted = true; await writer.abort(); continue; }
        if (out.length) await forward(out);
      }
      if (!aborted) {
        const tail = check.end();
        if (check.rejected || stream.sizeExceeded) { aborted = true; await writer.abort(); }
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
        await writer.abort();
        log.info({ queue_id: 'NOQUEUE', client: clientName(session), from, status: 'reject' }, `reject: END-OF-MESSAGE from ${clientName(session)}: ${rejection.responseCode} ${rejection.message}`);
        throw rejection;
      }
      const headers = verdicts.map((v) => v.headers ?? '').join('');
      const notes = Object.assign({}, ...verdicts.map((v) => v.notes ?? {}));
      if (headers || Object.keys(notes).length) await writer.json({ type: 'after-body', headers, notes });
      await writer.end();
      const reply = await reader.json();
      if (!reply.ok && Number.isInteger(reply.code) && reply.code >= 400 && reply.code < 600
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
      return reply.queue_id as string;
    } catch (e) {
      if ((e as any).responseCode) throw e;
      log.error({ err: (e as Error).message }, 'message transfer to cleanup failed');
      throw smtpError(451, '4.3.0', 'Error: queue file write error');
    } finally {
      for (const o of observers) o.abort();
      sock.destroy();
    }
  }

  return {
    listen(handle) {
      const server = makeServer(ctx.config);
      servers.push(server);
      server.listen(handle as any);
    },
    reload(config) {
      policy = buildPolicy(config, policy);
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
      return Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => { anvil.close(); dovecot?.close(); });
    },
  };
}

function describeTls(session: SMTPServerSession): string {
  const c = (session as any).tlsOptions as { name?: string; version?: string; standardName?: string } | undefined;
  return c ? `${c.version ?? 'TLS'} with cipher ${c.standardName ?? c.name ?? 'unknown'}` : 'TLS';
}

runService('smtpd', start);
