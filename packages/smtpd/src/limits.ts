/**
 * Limits that keep the server up, Postfix's way:
 *
 * - per client address, counted by anvil across every smtpd process of a
 *   listener: connections open at once and opened per anvil_rate_time_unit
 *   (421 4.7.0 at connect), MAIL FROM and RCPT TO per time unit (450 4.7.1),
 *   failed AUTH attempts per time unit (the next AUTH gets 421 4.7.0 and the
 *   connection is closed). smtpd_client_event_limit_exceptions ($mynetworks)
 *   are exempt. anvil counts a client by clientKey(): IPv4 per address
 *   (smtpd_client_ipv4_prefix_length), IPv6 per /64 (smtpd_client_ipv6_prefix_length).
 * - per session: every 4xx/5xx reply is an error; past smtpd_soft_error_limit
 *   the MAIL and RCPT error replies wait smtpd_error_sleep_time, at
 *   smtpd_hard_error_limit the next command gets `421 4.7.0 Error: too many
 *   errors` and the connection closes. A failed AUTH waits longer with every
 *   failure of the client. NOOP, RSET, VRFY and HELP beyond
 *   smtpd_junk_command_limit count as errors.
 * - smtpd_timeout for commands and message data (421 4.4.2), and
 *   line_length_limit for command lines (421), replies worded as Postfix's.
 *
 * The per-session part hooks each connection (connections.ts), since
 * smtp-server answers unknown commands and timeouts itself.
 */
import * as net from 'node:net';
import { SMTPServer, SMTPServerSession } from 'smtp-server';
import { MainConfig, NetworkList, Logger, smtpError, SmtpError, ipToBytes, formatIPv6, AnvilRequest, AnvilReply } from '@postern/common';
import { AnvilClient } from './anvil-client.js';
import { onEachConnection } from './connections.js';

export interface LimitPolicy {
  /** The master.cf service name: anvil counts per service and client, as Postfix does. */
  service: string;
  hostname: string;
  exceptions: NetworkList;
  connectionCount: number;
  connectionRate: number;
  messageRate: number;
  recipientRate: number;
  authRate: number;
  rateUnit: string;
  ipv4Prefix: number;
  ipv6Prefix: number;
  softErrors: number;
  hardErrors: number;
  errorSleepMs: number;
  junkCommands: number;
}

export function limitPolicy(config: MainConfig, service: string): LimitPolicy {
  return {
    service,
    hostname: config.get('myhostname'),
    exceptions: new NetworkList(config.list('smtpd_client_event_limit_exceptions')),
    connectionCount: config.int('smtpd_client_connection_count_limit'),
    connectionRate: config.int('smtpd_client_connection_rate_limit'),
    messageRate: config.int('smtpd_client_message_rate_limit'),
    recipientRate: config.int('smtpd_client_recipient_rate_limit'),
    authRate: config.int('smtpd_client_auth_rate_limit'),
    rateUnit: `${config.seconds('anvil_rate_time_unit')}s`,
    ipv4Prefix: config.int('smtpd_client_ipv4_prefix_length'),
    ipv6Prefix: config.int('smtpd_client_ipv6_prefix_length'),
    softErrors: config.int('smtpd_soft_error_limit'),
    hardErrors: config.int('smtpd_hard_error_limit'),
    errorSleepMs: config.seconds('smtpd_error_sleep_time') * 1000,
    junkCommands: config.int('smtpd_junk_command_limit'),
  };
}

/**
 * What anvil counts a client under: its address, or for a prefix shorter
 * than the address the network block (`2001:db8::/64`), so the many addresses
 * one IPv6 client has all count as one (Postfix 3.8's
 * smtpd_client_ipv6_prefix_length). An IPv4-mapped address is IPv4.
 */
export function clientKey(address: string, ipv4Prefix: number, ipv6Prefix: number): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const a = mapped ? mapped[1] : address;
  if (net.isIPv4(a)) {
    const bits = Math.max(0, Math.min(32, ipv4Prefix));
    if (bits >= 32) return a;
    const n = a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const masked = bits === 0 ? 0 : (n - (n % 2 ** (32 - bits)));
    return `${[24, 16, 8, 0].map((sh) => Math.floor(masked / 2 ** sh) % 256).join('.')}/${bits}`;
  }
  if (net.isIPv6(a)) {
    const bits = Math.max(0, Math.min(128, ipv6Prefix));
    const bytes = ipToBytes(a);
    if (bits >= 128) return formatIPv6(bytes);
    for (let i = 0; i < 16; i++) {
      const keep = Math.max(0, Math.min(8, bits - 8 * i));
      bytes[i] &= (0xff << (8 - keep)) & 0xff;
    }
    return `${formatIPv6(bytes)}/${bits}`;
  }
  return address;
}

/** A failed AUTH waits at most this many times smtpd_error_sleep_time. */
const MAX_AUTH_DELAY_STEPS = 10;
const JUNK = new Set(['NOOP', 'RSET', 'VRFY', 'HELP']);

interface SessionState {
  address: string;
  /** Resolves once anvil counted (true) or skipped (false) this connection. */
  registered?: Promise<boolean>;
  errors: number;
  authFailures: number;
  junk: number;
  lastCommand: string;
}

export class ClientLimits {
  private readonly sessions = new WeakMap<SMTPServerSession, SessionState>();

  constructor(private readonly anvil: AnvilClient, private readonly log: Logger,
    private readonly policy: () => LimitPolicy, private readonly label: (session: SMTPServerSession) => string) {}

  private state(session: SMTPServerSession, address = session.remoteAddress): SessionState {
    let s = this.sessions.get(session);
    if (!s) this.sessions.set(session, s = { address, errors: 0, authFailures: 0, junk: 0, lastCommand: 'CONNECT' });
    return s;
  }

  private exempt(address: string): boolean {
    return this.policy().exceptions.contains(address);
  }

  private ask(type: AnvilRequest['type'], address: string, extra: { peek?: boolean } = {}): Promise<AnvilReply | null> {
    const p = this.policy();
    // one IPv6 client holds a whole /64: count the block, not the address
    return this.anvil.request({ type, service: p.service, client: clientKey(address, p.ipv4Prefix, p.ipv6Prefix), ...extra } as AnvilRequest);
  }

  private warnExceeded(what: string, value: number, session: SMTPServerSession): void {
    const p = this.policy();
    this.log.warn({ client: this.label(session), listener: p.service, limit_value: value, status: 'reject' },
      `${what} limit exceeded: ${value} from ${this.label(session)} for service ${p.service}`);
  }

  /** At connect: the 421 for a client over its connection count or rate, else null. */
  async connect(session: SMTPServerSession): Promise<SmtpError | null> {
    const s = this.state(session);
    if (this.exempt(s.address)) { s.registered = Promise.resolve(false); return null; }
    const reply = this.ask('connect', s.address);
    s.registered = reply.then((r) => !!r?.ok);
    const r = await reply;
    if (!r?.ok) return null;
    const p = this.policy();
    const tooMany = smtpError(421, '4.7.0', `${p.hostname} Error: too many connections from ${s.address}`);
    const count = r.count ?? 0;
    const rate = r.rate ?? 0;
    if (p.connectionCount > 0 && count > p.connectionCount) { this.warnExceeded('Connection concurrency', count, session); return tooMany; }
    if (p.connectionRate > 0 && rate > p.connectionRate) { this.warnExceeded('Connection rate', rate, session); return tooMany; }
    return null;
  }

  disconnect(session: SMTPServerSession): void {
    const s = this.sessions.get(session);
    void s?.registered?.then((counted) => { if (counted) void this.ask('disconnect', s.address); });
  }

  /** MAIL FROM: the 450 for a client over its message rate, else null. */
  mail(session: SMTPServerSession): Promise<SmtpError | null> {
    return this.overRate(session, 'message', this.policy().messageRate, 'Message delivery request rate', 'too much mail');
  }

  /** RCPT TO: the 450 for a client over its recipient rate, else null. */
  recipient(session: SMTPServerSession): Promise<SmtpError | null> {
    return this.overRate(session, 'recipient', this.policy().recipientRate, 'Recipient address rate', 'too many recipients');
  }

  /** Count one event with anvil: the 450 when the client's rate is now over `limit` (0: no limit). */
  private async overRate(session: SMTPServerSession, event: 'message' | 'recipient', limit: number, what: string,
    text: string): Promise<SmtpError | null> {
    const s = this.state(session);
    if (limit <= 0 || this.exempt(s.address)) return null;
    const r = await this.ask(event, s.address);
    if (!r?.ok || (r.rate ?? 0) <= limit) return null;
    this.warnExceeded(what, r.rate!, session);
    return smtpError(450, '4.7.1', `Error: ${text} from ${s.address}`);
  }

  /** Before checking an AUTH: the 421 for a client that failed too often in this time unit, else null. */
  async authAllowed(session: SMTPServerSession): Promise<SmtpError | null> {
    const p = this.policy();
    const s = this.state(session);
    if (p.authRate <= 0 || this.exempt(s.address)) return null;
    const r = await this.ask('auth', s.address, { peek: true });
    if (!r?.ok || (r.rate ?? 0) < p.authRate) return null;
    this.warnExceeded('AUTH failure rate', r.rate!, session);
    return smtpError(421, '4.7.0', `${p.hostname} Error: too many AUTH failures from ${s.address}`);
  }

  /**
   * A failed AUTH: counts it and returns how long to wait before the 535,
   * smtpd_error_sleep_time times the client's failures (this session's, or in
   * this time unit across sessions when more), bounded.
   */
  async authFailed(session: SMTPServerSession): Promise<{ failures: number; delayMs: number }> {
    const p = this.policy();
    const s = this.state(session);
    s.authFailures++;
    let failures = s.authFailures;
    if (!this.exempt(s.address)) {
      const r = await this.ask('auth', s.address);
      if (r?.ok && typeof r.rate === 'number') failures = Math.max(failures, r.rate);
    }
    return { failures, delayMs: p.errorSleepMs * Math.min(failures, MAX_AUTH_DELAY_STEPS) };
  }

  /** How long an error reply to MAIL or RCPT waits: smtpd_error_sleep_time once past the soft limit. */
  errorDelay(session: SMTPServerSession): number {
    const p = this.policy();
    return this.state(session).errors >= p.softErrors ? p.errorSleepMs : 0;
  }

  /** A queued message resets the session's error count, as in Postfix ("without delivering mail"). */
  delivered(session: SMTPServerSession): void {
    this.state(session).errors = 0;
  }

  /** Hooks every connection `server` accepts from now on: error counting, timeouts, long lines. */
  install(server: SMTPServer): void {
    onEachConnection(server, (conn) => this.hook(conn));
  }

  private hook(conn: any): void {
    const st = this.state(conn.session, conn.remoteAddress);
    const label = () => this.label(conn.session);
    const policy = () => this.policy();
    const send = conn.send;
    let closing = false;
    const hangUp = (why: string, code: string, text: string) => {
      closing = true;
      this.log.info({ client: label(), last_command: st.lastCommand, errors: st.errors, status: 'disconnect' }, `${why} after ${st.lastCommand} from ${label()}`);
      send.call(conn, 421, `${code} ${policy().hostname} ${text}`, false);
    };
    conn.send = function (code: number, data: unknown, context?: unknown) {
      if (closing) return send.call(this, code, data, context);
      // smtp-server's own closing replies, worded as Postfix's
      if (code === 421 && data === 'Timeout - closing connection') return hangUp('timeout', '4.4.2', 'Error: timeout exceeded');
      if (code === 421 && data === 'Error: Command line too long') return hangUp('line too long', '4.5.0', 'Error: command line too long');
      if (code >= 400 && code !== 421) {
        st.errors++;
        // the hard limit below governs bad commands, not smtp-server's fixed count of ten
        this._unrecognizedCommands = 0;
      }
      return send.call(this, code, data, context);
    };
    const onCommand = conn._onCommand;
    conn._onCommand = function (command: Buffer, callback: () => void) {
      // a continuation line (AUTH's base64) is no command of its own
      if (!this._nextHandler) {
        const verb = (/^[A-Za-z]{1,12}/.exec((command || '').toString('latin1'))?.[0] ?? '?').toUpperCase();
        st.lastCommand = verb;
        if (JUNK.has(verb) && ++st.junk > policy().junkCommands) st.errors++;
      }
      const p = policy();
      if (p.hardErrors > 0 && st.errors >= p.hardErrors) {
        hangUp('too many errors', '4.7.0', 'Error: too many errors');
        return;
      }
      return onCommand.call(this, command, callback);
    };
  }
}

/** Waits before a reply (the error sleep); resolves at once for 0. */
export function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}
