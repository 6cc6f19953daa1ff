/**
 * What a log line means for the numbers: one classifier shared by `postern
 * stats` (which reads maillog_file) and the metrics service (which gets the
 * same lines from master), so both count received, delivered, deferred,
 * bounced and rejected mail the same way.
 */

export type LogEventKind =
  | 'connect' | 'disconnect' | 'auth_failed' | 'received' | 'dkim_signed'
  | 'delivered' | 'deferred' | 'bounced' | 'expired' | 'rejected' | 'agent_failed' | 'removed';

export interface LogEvent {
  kind: LogEventKind;
  /** The program (`smtpd`, `lmtp`, ...), without the `[listener]` suffix. */
  service: string;
  /** The master.cf service name inside `smtpd[...]`, or the program name. */
  listener: string;
  queue_id: string;
  /** smtp, lmtp or local for agent results; the service that decided otherwise (cleanup, qmgr). */
  transport: string;
  /** Delivery delay in seconds (delivered, deferred, bounced, expired). */
  delay?: number;
  /** The connection used TLS (disconnect in smtpd, results of smtp). */
  tls?: boolean;
  /** Rejections: the restriction or check that rejected, a short name fit for a metric label. */
  restriction?: string;
}

/** Delivery agents: the services whose status= lines are per-recipient results (local: qmgr's requests, issue 10). */
const DELIVERY_AGENTS = new Set(['smtp', 'lmtp', 'local']);

/**
 * Rejections whose log line does not name a restriction: named by their text.
 * The names are Postfix's parameters or restrictions where one exists.
 */
const REJECT_NAMES: [RegExp, string][] = [
  [/message too large/, 'message_size_limit'],
  [/SMTP smuggling|bare <CR> or <LF>/, 'smtp_smuggling'],
  [/improper command pipelining/, 'smtpd_forbid_unauth_pipelining'],
  [/not owned by user/, 'reject_sender_login_mismatch'],
  [/too many recipients/i, 'smtpd_recipient_limit'],
  [/^Connection concurrency limit/, 'smtpd_client_connection_count_limit'],
  [/^Connection rate limit/, 'smtpd_client_connection_rate_limit'],
  [/^Message delivery request rate limit/, 'smtpd_client_message_rate_limit'],
  [/^Recipient address rate limit/, 'smtpd_client_recipient_rate_limit'],
  [/^AUTH failure rate limit/, 'smtpd_client_auth_rate_limit'],
  [/DMARC/i, 'dmarc'],
  [/SPF/, 'spf'],
  [/spam/i, 'spamd'],
  [/END-OF-MESSAGE/, 'message_checks'],
  [/User unknown/, 'reject_unlisted_recipient'],
  [/Relay access denied/, 'reject_unauth_destination'],
];

const LABEL_RE = /^[a-z][a-z0-9_]{0,63}$/;

/** The short name of a rejection: the line's own `restriction`, else one read from its text. */
function rejectRestriction(e: Record<string, unknown>): string {
  if (typeof e.restriction === 'string' && LABEL_RE.test(e.restriction)) return e.restriction;
  const msg = String(e.msg ?? '');
  for (const [re, name] of REJECT_NAMES) if (re.test(msg)) return name;
  return 'other';
}

/** One parsed log line, or null when it counts for nothing. */
export function classifyLogEvent(e: Record<string, any>): LogEvent | null {
  if (!e || typeof e !== 'object') return null;
  const tag = String(e.service ?? '');
  const service = tag.replace(/\[.*$/, '');
  const inner = /\[(.*)\]$/.exec(tag);
  const base = {
    service, listener: inner ? inner[1] : service,
    queue_id: typeof e.queue_id === 'string' ? e.queue_id : '', transport: service,
  };
  const msg = String(e.msg ?? '');
  const delay = typeof e.delay === 'number' && isFinite(e.delay) ? e.delay : undefined;
  if (service === 'smtpd') {
    if (msg.startsWith('connect from ')) return { kind: 'connect', ...base };
    if (msg === 'disconnect') return { kind: 'disconnect', ...base, tls: e.tls === true };
    if (e.auth_failures !== undefined && /authentication failed/.test(msg)) return { kind: 'auth_failed', ...base };
  }
  if (service === 'cleanup' && msg === 'queued' && base.queue_id) return { kind: 'received', ...base };
  if (service === 'cleanup' && msg === 'DKIM-Signature added') return { kind: 'dkim_signed', ...base };
  if (service === 'qmgr' && msg === 'removed') return { kind: 'removed', ...base };
  // a delivery agent that failed leaves its recipients deferred without a line of their own
  if (service === 'qmgr' && msg === 'delivery agent failed') {
    return { kind: 'agent_failed', ...base, transport: typeof e.transport === 'string' ? e.transport : 'qmgr' };
  }
  switch (e.status) {
    case 'sent':
      return DELIVERY_AGENTS.has(service) ? { kind: 'delivered', ...base, delay, tls: e.tls === true } : null;
    case 'deferred':
      return DELIVERY_AGENTS.has(service) ? { kind: 'deferred', ...base, delay, tls: e.tls === true } : null;
    case 'bounced':
      // qmgr's bounced lines sum up recipients an agent or cleanup already logged
      return service === 'qmgr' ? null : { kind: 'bounced', ...base, delay, tls: e.tls === true };
    case 'expired':
      return { kind: 'expired', ...base, delay };
    case 'reject':
      return { kind: 'rejected', ...base, restriction: rejectRestriction(e) };
  }
  return null;
}
