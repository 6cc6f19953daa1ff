/**
 * smtpd's SMTP session handlers: connect, AUTH, MAIL, RCPT, DATA and close,
 * as named functions over an explicit context (configuration, policy, log,
 * client limits, the cleanup client). main.ts only wires them into
 * smtp-server. They decide and reply; none of them touches the queue.
 */
import {
  SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream,
  SMTPServerOptions, SMTPServerSession,
} from 'smtp-server';
import {
  MainConfig, Logger, smtpError, SmtpError, PasswordChecker, sharedResolver, loginOwnsAddress,
} from '@postern/common';
import { SessionClient, checkRecipientNamed } from './restrictions.js';
import { ClientLimits, sleep } from './limits.js';
import { queueSpaceShort, NO_STORAGE } from './queue-space.js';
import { DovecotSaslClient, dovecotCheck } from './dovecot-sasl.js';
import { Policy, knownRecipient } from './policy.js';
import { mailParamError, rcptParamError } from './dsn.js';
import { SessionMilters, milterSessions } from './milters.js';

type Reply = (err?: Error | null) => void;

/** What every session of one smtpd process shares. Getters, where a reload replaces the value. */
export interface SessionContext {
  /** main.cf as now (with this listener's -o overrides); a reload replaces it. */
  config(): MainConfig;
  /** The policy in force now; a reload replaces it. */
  policy(): Policy;
  /** smtpd_sasl_type = dovecot: the process's auth-client connection, else null (the user table). */
  dovecot(): DovecotSaslClient | null;
  /** The queue directory, for the free-space check at MAIL. */
  spoolRoot: string;
  log: Logger;
  /** anvil's counts and the session's error limits (limits.ts). */
  limits: ClientLimits;
  /** Checks passwords from the user table off the event loop (a check costs milliseconds of CPU). */
  passwords: PasswordChecker;
  /** Streams the message to cleanup; resolves to the queue id once the queue file is durable. */
  receiveMessage(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string>;
}

/** What one listener requires, fixed when its server is made. */
export interface ListenerRules {
  /** smtpd_tls_security_level = encrypt, or wrapper mode. */
  tlsRequired: boolean;
  /** A submission listener (TLS required and AUTH offered): authenticated users only. */
  authRequired: boolean;
}

/** Each connection's client, its reverse DNS looked up once (at connect, or when a restriction first needs it). */
export const clients = new WeakMap<SMTPServerSession, SessionClient>();

export function sessionClient(session: SMTPServerSession, config: MainConfig): SessionClient {
  let c = clients.get(session);
  if (!c) clients.set(session, c = new SessionClient(session.remoteAddress, sharedResolver(config)));
  return c;
}

/** `name[address]`: the forward-confirmed name, or unknown. */
export function clientName(session: SMTPServerSession): string {
  return clients.get(session)?.label ?? `unknown[${session.remoteAddress}]`;
}

/** An error reply to MAIL or RCPT waits smtpd_error_sleep_time once the session passed smtpd_soft_error_limit. */
export function replyLater(c: SessionContext, session: SMTPServerSession, cb: Reply): Reply {
  return (err?: Error | null) => {
    if (!err) return cb();
    void sleep(c.limits.errorDelay(session)).then(() => cb(err));
  };
}

export function onConnect(c: SessionContext, session: SMTPServerSession, cb: Reply): void {
  const { log } = c;
  const client = sessionClient(session, c.config());
  // anvil first: a flood is turned away before it costs a DNS lookup
  c.limits.connect(session).then((refused) => {
    if (refused) {
      log.info({ client: clientName(session) }, `connect from ${clientName(session)}`);
      return cb(refused);
    }
    // Postfix names the client before the greeting; mynetworks is trusted and not looked up unless a restriction asks
    const lookup = c.policy().mynetworks.contains(session.remoteAddress) ? Promise.resolve() : client.lookup();
    lookup.catch((e) => log.error({ err: (e as Error).message }, 'client name lookup failed')).then(() => {
      if (client.identity?.dnsError) log.warn({ client: clientName(session), err: client.identity.dnsError }, `${clientName(session)}: client name lookup failed temporarily`);
      log.info({ client: clientName(session) }, `connect from ${clientName(session)}`);
      // smtpd_milters: one milter session per milter for this connection; what they say about it is answered at MAIL
      return SessionMilters.start(c.config(), log, session, c.spoolRoot, () => ({ name: client.identity?.name ?? 'unknown', label: clientName(session) }))
        .then((m) => { if (m) milterSessions.set(session, m); }, (e) => log.error({ err: (e as Error).stack ?? String(e) }, 'milter start failed'))
        .then(() => cb());
    });
  });
}

export function onClose(c: SessionContext, session: SMTPServerSession): void {
  c.limits.disconnect(session);
  milterSessions.get(session)?.close();
  milterSessions.delete(session);
  c.log.info({ client: clientName(session), tls: session.secure || undefined }, 'disconnect');
}

export function onAuth(c: SessionContext, auth: SMTPServerAuthentication, session: SMTPServerSession,
  cb: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void): void {
  const { log, limits } = c;
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
    const dovecot = c.dovecot();
    if (dovecot) {
      const verdict = await dovecotCheck(dovecot, auth, session).catch((e: Error) => {
        log.error({ client: clientName(session), method: auth.method, err: e.message }, `${clientName(session)}: SASL ${auth.method}: Dovecot auth unavailable`);
        return null;
      });
      if (!verdict) return cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
      // Dovecot's login name, not what the client typed, is the session's user (sender check, logs)
      if (verdict.ok) milterSessions.get(session)?.extra.set('{auth_type}', auth.method);
      return verdict.ok ? cb(null, { user: verdict.user }) : fail();
    }
    let entry;
    try { entry = await c.policy().users.credentials(auth.username ?? ""); } catch (e) {
      log.error({ err: (e as Error).message }, 'user table unavailable');
      return cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
    }
    if (!entry) return fail();
    let ok;
    try { ok = await c.passwords.check(auth.password ?? '', entry.password); } catch (e) {
      log.error({ client: clientName(session), method: auth.method, err: (e as Error).message }, `${clientName(session)}: SASL ${auth.method}: password check unavailable`);
      return cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
    }
    if (!ok) return fail();
    milterSessions.get(session)?.extra.set('{auth_type}', auth.method);
    cb(null, { user: entry.user });
  };
  check().catch((e) => {
    log.error({ err: (e as Error).stack ?? String(e) }, 'authentication check failed');
    cb(smtpError(454, '4.7.0', 'Temporary authentication failure'));
  });
}

export function onMailFrom(c: SessionContext, listener: ListenerRules, address: SMTPServerAddress, session: SMTPServerSession, done: Reply): void {
  const { log } = c;
  const cb = replyLater(c, session, done);
  if (listener.tlsRequired && !session.secure) return cb(smtpError(530, '5.7.0', 'Must issue a STARTTLS command first'));
  if (listener.authRequired && !session.user) return cb(smtpError(530, '5.7.0', 'Authentication required'));
  const badParam = mailParamError(address);
  if (badParam) return cb(badParam);
  if (session.user && !loginOwnsAddress(String(session.user), address.address)) {
    // reject_sender_login_mismatch: an authenticated user sends only as an address they own (smtpd_sender_login_maps)
    const refuse = (code: number, enhanced: string, text: string) => {
      log.info({ queue_id: 'NOQUEUE', client: clientName(session), sasl_username: String(session.user), from: address.address, status: 'reject' },
        `reject: MAIL from ${clientName(session)}: ${code} ${enhanced} ${text}`);
      cb(smtpError(code, enhanced, text));
    };
    c.policy().senderLogins.owns(String(session.user), address.address).then((owned) => {
      if (!owned) return refuse(553, '5.7.1', `<${address.address}>: Sender address rejected: not owned by user ${session.user}`);
      mailAccepted();
    }, (e) => {
      log.error({ err: (e as Error).message }, 'smtpd_sender_login_maps unavailable');
      refuse(451, '4.3.0', `<${address.address}>: Sender address rejected: Temporary lookup failure`);
    });
    return;
  }
  mailAccepted();
  function mailAccepted(): void {
    const size = Number((address as any).args?.SIZE) || 0;
    queueSpaceShort(c.spoolRoot, size, c.config(), log).then((short) => {
      if (!short) {
        return c.limits.mail(session).then((tooMuch) => tooMuch, () => null).then((tooMuch) => {
          if (tooMuch) return cb(tooMuch);
          const milters = milterSessions.get(session);
          if (!milters) return cb();
          return milters.mailFrom(address).then((refused) => cb(refused), (e) => {
            log.error({ err: (e as Error).stack ?? String(e) }, 'milter MAIL event failed');
            cb(smtpError(451, '4.3.0', 'Error: internal error, try again later'));
          });
        });
      }
      log.info({ queue_id: 'NOQUEUE', client: clientName(session), from: address.address, status: 'reject' },
        `reject: MAIL from ${clientName(session)}: ${NO_STORAGE.code} ${NO_STORAGE.enhanced} ${NO_STORAGE.text}`);
      cb(smtpError(NO_STORAGE.code, NO_STORAGE.enhanced, NO_STORAGE.text));
    });
  }
}

export function onRcptTo(c: SessionContext, address: SMTPServerAddress, session: SMTPServerSession, done: Reply): void {
  const { log } = c;
  const cb = replyLater(c, session, done);
  const reject = (code: number, enhanced: string, text: string, restriction?: string) => {
    log.info({ queue_id: 'NOQUEUE', client: clientName(session), from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
      to: address.address, proto: session.transmissionType, helo: session.hostNameAppearsAs, dsn: enhanced, restriction, status: 'reject' },
    `reject: RCPT from ${clientName(session)}: ${code} ${enhanced} ${text}`);
    cb(smtpError(code, enhanced, text));
  };
  const badParam = rcptParamError(address);
  if (badParam) return reject(badParam.responseCode, badParam.enhanced, badParam.message.slice(badParam.enhanced.length + 1));
  // one policy for the whole RCPT, even if a reload comes while it is checked
  const current = c.policy();
  if (session.envelope.rcptTo.length >= current.recipientLimit) return reject(452, '4.5.3', 'Error: too many recipients', 'smtpd_recipient_limit');
  const checkRecipients = () => checkRecipientNamed(current.restrictions, {
    resolver: sharedResolver(c.config()),
    knownRecipient: (a) => knownRecipient(current, a).catch((e) => {
      log.error({ err: (e as Error).message }, 'user table unavailable');
      throw e;
    }),
    warn: (fields, msg) => log.warn({ client: clientName(session), ...fields }, msg),
  }, {
    client: sessionClient(session, c.config()),
    helo: session.hostNameAppearsAs || '',
    sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
    recipient: address.address,
    authenticated: !!session.user,
  }).then((r) => {
    if (r) return reject(r.rejection.code, r.rejection.enhanced, r.rejection.text, r.restriction);
    const milters = milterSessions.get(session);
    if (!milters) return cb();
    // the milters see only recipients the restrictions let through (no SMFIP_RCPT_REJ)
    return milters.rcptTo(address).then((refused) => cb(refused));
  }).then(undefined, (e) => {
    log.error({ err: (e as Error).stack ?? String(e) }, 'restriction check failed');
    reject(451, '4.3.0', 'Error: internal error, try again later');
  });
  // anvil's recipient rate first, then the restriction lists
  c.limits.recipient(session).then((tooMany) => {
    if (tooMany) return reject(tooMany.responseCode, tooMany.enhanced, tooMany.message.slice(tooMany.enhanced.length + 1), 'smtpd_client_recipient_rate_limit');
    return checkRecipients();
  }, () => checkRecipients());
}

export function onData(c: SessionContext, stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
  c.receiveMessage(stream, session).then((id) => { c.limits.delivered(session); cb(null, `2.0.0 Ok: queued as ${id}`); }, (err) => cb(err));
}

/** `smtpd_forbid_unauth_pipelining`: a client that sent commands ahead of the replies (pipelining.ts) is logged. */
export function onPipeliningViolation(c: SessionContext, session: SMTPServerSession, address: string, when: string, input: string): void {
  const client = clients.get(session)?.label ?? `unknown[${address}]`;
  c.log.info({ client, status: 'reject', input }, `improper command pipelining ${when} from ${client}: ${JSON.stringify(input)}`);
}

/** The smtp-server callbacks of one listener, each bound to its context. */
export function sessionHandlers(c: SessionContext, listener: ListenerRules): Pick<SMTPServerOptions,
  'onConnect' | 'onClose' | 'onAuth' | 'onMailFrom' | 'onRcptTo' | 'onData'> {
  return {
    onConnect: (session, cb) => onConnect(c, session, cb),
    onClose: (session) => onClose(c, session),
    onAuth: (auth, session, cb) => onAuth(c, auth, session, cb),
    onMailFrom: (address, session, cb) => onMailFrom(c, listener, address, session, cb),
    onRcptTo: (address, session, cb) => onRcptTo(c, address, session, cb),
    onData: (stream, session, cb) => onData(c, stream, session, cb),
  };
}
