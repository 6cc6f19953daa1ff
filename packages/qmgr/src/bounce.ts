/**
 * Delivery status notifications (RFC 3464): the "Undelivered Mail Returned to
 * Sender" that qmgr sends when recipients bounced, and the one "Delayed Mail"
 * warning after delay_warning_time. A notification is an ordinary message
 * with a null envelope sender, queued through cleanup like any other; qmgr
 * reads only the original's header section (or, for DSN RET=FULL, a message
 * no larger than bounce_size_limit) to build it.
 */
import * as fsp from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import {
  MainConfig, QueueFileInfo, StatusRecord, Spool, Logger, rfc5322Date, headerSafe, appendStatus, CLEANUP_LOCAL,
  submitMessage, LocalEnvelope, DeliveryResult,
} from '@postern/common';
import { backscatterReason } from './backscatter.js';

/** failed: bounced recipients; delayed: the delay warning; success: NOTIFY=SUCCESS recipients delivered or relayed. */
export type DsnKind = 'failed' | 'delayed' | 'success';

/** One recipient as a notification reports it, from its last status record. */
export interface DsnRecipient {
  address: string;
  /** Original recipient (DSN ORCPT, or the address before alias expansion). */
  orcpt?: string;
  /** Enhanced status code as recorded: 5.x.y for failed, 4.x.y for delayed. */
  dsn: string;
  /** The server's reply or our own explanation, one line. */
  reason: string;
  /** Who gave the reply, as logged: `host[address]:port` or `name[private/socket]`. */
  relay?: string;
  /** Time of the last attempt, ms since the epoch. */
  at?: number;
  /** A success notice's action: `relayed` to a next hop without DSN, else `delivered`. */
  action?: 'delivered' | 'relayed';
}

/** Most header bytes returned: a header section larger than this is cut at a line end. */
const HEADER_SECTION_LIMIT = 256 * 1024;
const READ_CHUNK = 16 * 1024;
/** cleanup answers as soon as the file is on disk; a slower answer means it is stuck. */
const CLEANUP_TIMEOUT_MS = 60_000;

/**
 * Recipients whose final (or current) state is `status`, with the details of
 * their last status record, restricted to those whose DSN NOTIFY asks for this
 * kind of report (no NOTIFY means FAILURE,DELAY, as in RFC 3461 practice).
 */
export function dsnRecipients(info: QueueFileInfo, status: 'bounced' | 'deferred', kind: DsnKind): DsnRecipient[] {
  const last = new Map<number, Extract<StatusRecord, { type: 'rcpt' }>>();
  for (const s of info.statuses) {
    if (s.type !== 'rcpt') continue;
    const prev = last.get(s.index);
    if (prev && (prev.status === 'sent' || prev.status === 'bounced')) continue; // final states stay final
    last.set(s.index, s);
  }
  const wanted = kind === 'failed' ? 'FAILURE' : 'DELAY';
  const out: DsnRecipient[] = [];
  info.envelope.recipients.forEach((r, index) => {
    const s = last.get(index);
    if (!s || s.status !== status) return;
    const notify = (r.notify ?? []).map((n) => n.toUpperCase());
    if (notify.length && !notify.includes(wanted)) return;
    out.push({ address: r.address, orcpt: r.orcpt, dsn: s.dsn, reason: s.reason, relay: s.relay, at: s.at });
  });
  return out;
}

/**
 * Recipients just sent whose NOTIFY asks for SUCCESS, except those a next hop
 * that offers DSN took NOTIFY for: it reports success itself (RFC 3461 5.2.2,
 * as Postfix's smtp client drops SUCCESS then).
 */
export function successRecipients(info: QueueFileInfo, results: DeliveryResult[]): DsnRecipient[] {
  const out: DsnRecipient[] = [];
  for (const res of results) {
    const r = info.envelope.recipients[res.index];
    if (!r || res.status !== 'sent' || res.dsnAction === 'passed') continue;
    if (!(r.notify ?? []).some((n) => n.toUpperCase() === 'SUCCESS')) continue;
    out.push({ address: r.address, orcpt: r.orcpt, dsn: res.dsn?.startsWith('2.') ? res.dsn : '2.0.0', reason: res.reason, relay: res.relay,
      at: Date.now(), action: res.dsnAction === 'relayed' ? 'relayed' : 'delivered' });
  }
  return out;
}

/** Read `length` bytes at `offset` of the queue file, fewer at its end. */
async function readAt(fh: fsp.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/** Every line ends in CRLF, as the wire wants; a bare CR stays as it is. */
function crlf(buf: Buffer): Buffer {
  return Buffer.from(buf.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
}

/**
 * The original message's header section as delivered (prepended headers first),
 * without the blank line that ends it. Reads only as far as that blank line.
 */
export async function readHeaderSection(info: QueueFileInfo, limit = HEADER_SECTION_LIMIT): Promise<Buffer> {
  const fh = await fsp.open(info.file, 'r');
  try {
    let buf = Buffer.alloc(0);
    let end = -1;
    while (end < 0 && buf.length < info.messageLength && buf.length < limit) {
      const chunk = await readAt(fh, info.messageOffset + buf.length, Math.min(READ_CHUNK, info.messageLength - buf.length));
      if (!chunk.length) break;
      buf = Buffer.concat([buf, chunk]);
      // the first empty line: at the very start (no headers at all) or right after a line end
      const m = /(?:^|\n)\r?\n/.exec(buf.toString('latin1'));
      if (m) end = m[0].length > 1 && m[0][0] === '\n' ? m.index + 1 : m.index;
    }
    if (end < 0) {
      // no blank line within the limit (or a message that is all headers): whole lines only
      end = Math.min(buf.length, limit);
      if (end < info.messageLength) end = buf.lastIndexOf(10, end - 1) + 1;
    }
    return withFinalCrlf(crlf(Buffer.concat([info.prepend, buf.subarray(0, end)])));
  } finally {
    await fh.close();
  }
}

function withFinalCrlf(buf: Buffer): Buffer {
  return buf.length && buf[buf.length - 1] !== 10 ? Buffer.concat([buf, Buffer.from('\r\n')]) : buf;
}

/** The whole original message as delivered; only for messages within bounce_size_limit. */
async function readWholeMessage(info: QueueFileInfo): Promise<Buffer> {
  const fh = await fsp.open(info.file, 'r');
  try {
    const body = await readAt(fh, info.messageOffset, info.messageLength);
    return withFinalCrlf(crlf(Buffer.concat([info.prepend, body])));
  } finally {
    await fh.close();
  }
}

const isAscii = (s: string | Buffer) => !/[^\x00-\x7f]/.test(typeof s === 'string' ? s : s.toString('latin1'));

/** Word-wrap one paragraph for the human-readable part; continuation lines are indented. */
function wrap(text: string, width = 76, indent = '    '): string {
  const words = text.split(/ +/);
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) { lines.push(line); line = indent + w; } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join('\r\n');
}

/** Fold a delivery-status field at spaces so no line outgrows what SMTP carries. */
function field(name: string, value: string): string {
  const words = headerSafe(value).split(/ +/);
  const lines: string[] = [];
  let line = `${name}: `;
  for (const w of words) {
    if (line.trim().length > name.length + 1 && line.length + 1 + w.length > 78) { lines.push(line.trimEnd()); line = `    ${w}`; }
    else line = line.endsWith(': ') ? line + w : `${line} ${w}`;
  }
  lines.push(line.trimEnd());
  return lines.join('\r\n') + '\r\n';
}

/** `5.0 days`, `4.0 hours`, `30 seconds`: Postfix's wording for queue times. */
export function describeDuration(seconds: number): string {
  if (seconds >= 86400) return `${(seconds / 86400).toFixed(1)} days`;
  if (seconds >= 3600) return `${(seconds / 3600).toFixed(1)} hours`;
  if (seconds >= 60) return `${(seconds / 60).toFixed(1)} minutes`;
  return `${seconds} second${seconds === 1 ? '' : 's'}`;
}

/** `Diagnostic-Code:`: an SMTP reply when the reason holds one, our own text otherwise. */
function diagnosticCode(reason: string): string {
  const m = /(?:^|: )([245]\d\d[ -].*)$/.exec(reason);
  return m ? `smtp; ${m[1]}` : `X-Postern; ${reason}`;
}

/** `Remote-MTA:` for a network relay; none for a Unix socket such as local[private/local]. */
function remoteMta(relay: string | undefined): string | null {
  if (!relay || relay === 'none') return null;
  const m = /^([^[\s]+)\[([^\]]*)\]/.exec(relay);
  if (m) return m[2].includes('/') ? null : `dns; ${m[1]}`;
  return /^[A-Za-z0-9.-]+$/.test(relay) ? `dns; ${relay}` : null;
}

function originalRecipient(orcpt: string): string {
  return /^[A-Za-z0-9-]+;/.test(orcpt) ? orcpt : `rfc822; ${orcpt}`;
}

/** The human-readable line for one recipient, as Postfix writes it. */
function explain(r: DsnRecipient): string {
  const who = `<${r.address}>${r.orcpt && r.orcpt.replace(/^rfc822;\s*/i, '') !== r.address ? ` (expanded from <${r.orcpt.replace(/^rfc822;\s*/i, '')}>)` : ''}`;
  const said = r.relay && r.relay !== 'none' && /^[245]\d\d[ -]/.test(r.reason) ? `host ${r.relay} said: ${r.reason}` : r.reason;
  return wrap(headerSafe(`${who}: ${said}`));
}

function humanReadable(recipients: DsnRecipient[], config: MainConfig, kind: DsnKind, returned: 'message' | 'headers'): string {
  const host = config.get('myhostname');
  const attached = returned === 'message' ? 'It\'s attached below.' : 'Its headers are attached below.';
  const lines = [`This is the mail system at host ${host}.`, ''];
  if (kind === 'failed') {
    lines.push('I\'m sorry to have to inform you that your message could not',
      `be delivered to one or more recipients. ${attached}`);
  } else if (kind === 'success') {
    // Postfix's wording
    lines.push('Your message was successfully delivered to the destination(s)',
      'listed below. If the message was delivered to mailbox you will',
      'receive no further notifications. Otherwise you may still receive',
      'notifications of mail delivery errors from other systems.', '',
      '                   The mail system', '');
    for (const r of recipients) lines.push(explain(r), '');
    return lines.join('\r\n');
  } else {
    lines.push('####################################################################',
      '# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #',
      '####################################################################', '',
      `Your message could not be delivered for ${describeDuration(config.seconds('delay_warning_time'))}.`,
      `It will be retried until it is ${describeDuration(config.seconds('maximal_queue_lifetime'))} old.`);
  }
  lines.push('', 'For further assistance, please send mail to postmaster.', '',
    'If you do so, please include this problem report. You can',
    'delete your own text from the attached returned message.', '',
    '                   The mail system', '');
  for (const r of recipients) lines.push(explain(r), '');
  return lines.join('\r\n');
}

function deliveryStatus(info: QueueFileInfo, recipients: DsnRecipient[], config: MainConfig, kind: DsnKind): string {
  const env = info.envelope;
  let out = field('Reporting-MTA', `dns; ${config.get('myhostname')}`)
    + field('X-Postern-Queue-ID', env.id)
    + field('X-Postern-Sender', `rfc822; ${env.sender}`);
  if (env.dsn?.envid) out += field('Original-Envelope-Id', env.dsn.envid);
  out += field('Arrival-Date', rfc5322Date(new Date(env.arrival)));
  const retryUntil = rfc5322Date(new Date(env.arrival + config.seconds('maximal_queue_lifetime') * 1000));
  for (const r of recipients) {
    out += '\r\n' + field('Final-Recipient', `rfc822; ${r.address}`);
    if (r.orcpt) out += field('Original-Recipient', originalRecipient(r.orcpt));
    out += field('Action', kind === 'success' ? r.action ?? 'delivered' : kind);
    out += field('Status', r.dsn || (kind === 'failed' ? '5.0.0' : kind === 'success' ? '2.0.0' : '4.0.0'));
    const mta = remoteMta(r.relay);
    if (mta) out += field('Remote-MTA', mta);
    if (r.reason) out += field('Diagnostic-Code', diagnosticCode(r.reason));
    if (r.at) out += field('Last-Attempt-Date', rfc5322Date(new Date(r.at)));
    if (kind === 'delayed') out += field('Will-Retry-Until', retryUntil);
  }
  return out;
}

/**
 * The notification for `recipients` of the queued message `info`, as the bytes
 * to queue (CRLF line endings). `failed` reports bounced recipients; `delayed`
 * warns about deferred ones.
 */
export async function buildDsn(info: QueueFileInfo, recipients: DsnRecipient[], config: MainConfig, kind: DsnKind,
  now = new Date()): Promise<Buffer> {
  const env = info.envelope;
  const host = config.get('myhostname');
  // a REQUIRETLS message's content does not go back in a notice that travels without REQUIRETLS (RFC 8689 5)
  const whole = kind === 'failed' && env.dsn?.ret === 'FULL' && !env.requireTls
    && info.prepend.length + info.messageLength <= config.int('bounce_size_limit');
  const original = whole ? await readWholeMessage(info) : await readHeaderSection(info);
  const text = humanReadable(recipients, config, kind, whole ? 'message' : 'headers');
  const status = deliveryStatus(info, recipients, config, kind);
  // RFC 6533: addresses or headers in UTF-8 call for the "global" report types
  const statusType = isAscii(status) ? 'message/delivery-status' : 'message/global-delivery-status';
  const originalType = whole ? (isAscii(original) ? 'message/rfc822' : 'message/global')
    : (isAscii(original) ? 'text/rfc822-headers' : 'message/global-headers');
  const eightBit = !isAscii(text) || !isAscii(status) || !isAscii(original);
  const boundary = `${env.id}.${Math.floor(now.getTime() / 1000)}.${randomBytes(6).toString('hex')}/${host}`;
  const stamp = now.toISOString().replace(/\D/g, '').slice(0, 14);
  const head = [
    `Date: ${rfc5322Date(now)}`,
    `From: Mail Delivery System <${config.get('bounce_template_sender')}@${host}>`,
    `To: ${headerSafe(env.sender)}`,
    `Subject: ${kind === 'failed' ? 'Undelivered Mail Returned to Sender' : kind === 'success' ? 'Successful Mail Delivery Report' : 'Delayed Mail (still being retried)'}`,
    `Message-ID: <${stamp}.${env.id}.${randomBytes(4).toString('hex')}@${host}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    'Content-Type: multipart/report; report-type=delivery-status;',
    `\tboundary="${boundary}"`,
    `Content-Transfer-Encoding: ${eightBit ? '8bit' : '7bit'}`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    `Content-Type: text/plain; charset=${isAscii(text) ? 'us-ascii' : 'utf-8'}`,
    ...(isAscii(text) ? [] : ['Content-Transfer-Encoding: 8bit']),
    '',
    text,
    `--${boundary}`,
    'Content-Description: Delivery report',
    `Content-Type: ${statusType}`,
    '',
    status,
    `--${boundary}`,
    `Content-Description: ${whole ? 'Undelivered Message' : kind === 'failed' ? 'Undelivered Message Headers' : kind === 'success' ? 'Message Headers' : 'Delayed Message Headers'}`,
    `Content-Type: ${originalType}`,
    ...(isAscii(original) ? [] : ['Content-Transfer-Encoding: 8bit']),
    '',
    '',
  ].join('\r\n');
  return Buffer.concat([Buffer.from(head, 'utf8'), original, Buffer.from(`\r\n--${boundary}--\r\n`)]);
}

/** Queue a message through cleanup exactly as smtpd does; resolves to its queue id once it is durable. */
export async function submitToCleanup(socketPath: string, envelope: LocalEnvelope,
  message: Buffer, timeoutMs = CLEANUP_TIMEOUT_MS): Promise<string> {
  const reply = await submitMessage(socketPath, envelope, [message], { connectTimeoutMs: timeoutMs, idleTimeoutMs: timeoutMs });
  if (!reply.ok || typeof reply.queue_id !== 'string') throw new Error(`cleanup did not queue it: ${(!reply.ok && reply.error) || 'no queue id in reply'}`);
  return reply.queue_id;
}

export interface DsnContext { config: MainConfig; spool: Spool; log: Logger }

async function queueDsn(ctx: DsnContext, info: QueueFileInfo, recipients: DsnRecipient[], kind: DsnKind): Promise<string> {
  const message = await buildDsn(info, recipients, ctx.config, kind);
  return submitToCleanup(ctx.spool.privateSocket(CLEANUP_LOCAL),
    { sender: '', recipients: [{ address: info.envelope.sender }], origin: 'bounce' }, message);
}

/**
 * For a message whose recipients are all final: tell the sender about the
 * bounced ones. True when the message may now be removed (nothing to report,
 * a null sender, or the notification is queued); false when the notification
 * could not be queued and the message must stay for another try.
 */
export async function notifySenderOfBounces(ctx: DsnContext, info: QueueFileInfo): Promise<boolean> {
  const env = info.envelope;
  const bounced = dsnRecipients(info, 'bounced', 'failed');
  if (!bounced.length) return true;
  if (env.sender === '') {
    // never a bounce for a bounce: the undeliverable notification is dropped, loudly
    ctx.log.info({ queue_id: env.id, from: '<>', to: bounced.map((r) => `<${r.address}>`).join(','), nrcpt: bounced.length, status: 'bounced' },
      'undeliverable mail from the null sender discarded: no notification is sent for a bounce');
    return true;
  }
  const noDsn = backscatterReason(env, ctx.config);
  if (noDsn) {
    ctx.log.info({ queue_id: env.id, from: `<${env.sender}>`, to: bounced.map((r) => `<${r.address}>`).join(','), nrcpt: bounced.length,
      status: 'bounced', spf: env.auth?.spf ?? 'unknown', dkim_aligned: env.auth?.dkimAligned ?? false }, `no DSN: ${noDsn}`);
    return true;
  }
  try {
    const dsnId = await queueDsn(ctx, info, bounced, 'failed');
    ctx.log.info({ queue_id: env.id, dsn_queue_id: dsnId, to: `<${env.sender}>`, nrcpt: bounced.length },
      `sender non-delivery notification: ${dsnId}`);
    return true;
  } catch (e) {
    ctx.log.warn({ queue_id: env.id, to: `<${env.sender}>`, err: (e as Error).message },
      'sender non-delivery notification not queued; the message stays deferred and it is tried again');
    return false;
  }
}

/**
 * NOTIFY=SUCCESS: tell the sender these recipients were delivered (or relayed
 * to a next hop without DSN). Sent once, after the attempt that delivered
 * them; one that cannot be queued is logged and not retried (the mail itself
 * was delivered; Postfix defers the recipient instead, which would deliver it twice).
 */
export async function notifySenderOfSuccess(ctx: DsnContext, info: QueueFileInfo, recipients: DsnRecipient[]): Promise<void> {
  const env = info.envelope;
  if (env.sender === '') return; // a notification about a notification is never sent
  const noDsn = backscatterReason(env, ctx.config);
  if (noDsn) {
    ctx.log.info({ queue_id: env.id, from: `<${env.sender}>`, nrcpt: recipients.length }, `no success DSN: ${noDsn}`);
    return;
  }
  try {
    const dsnId = await queueDsn(ctx, info, recipients, 'success');
    ctx.log.info({ queue_id: env.id, dsn_queue_id: dsnId, to: `<${env.sender}>`, nrcpt: recipients.length },
      `sender delivery status notification: ${dsnId}`);
  } catch (e) {
    ctx.log.warn({ queue_id: env.id, to: `<${env.sender}>`, err: (e as Error).message }, 'sender success notification not queued');
  }
}

/** Whether a message with deferred recipients is due its one delay warning. */
export function delayWarningDue(info: QueueFileInfo, config: MainConfig, now = Date.now()): boolean {
  const after = config.seconds('delay_warning_time');
  if (after <= 0 || info.envelope.sender === '') return false;
  if (backscatterReason(info.envelope, config)) return false; // a warning to a sender nobody vouched for is backscatter too
  if (info.statuses.some((s) => s.type === 'flags' && s.warned)) return false;
  return now - info.envelope.arrival >= after * 1000;
}

/**
 * Send the one delay warning when it is due, and record that it was sent. A
 * warning that cannot be queued is tried again at the next retry.
 */
export async function warnSenderOfDelay(ctx: DsnContext, info: QueueFileInfo): Promise<void> {
  if (!delayWarningDue(info, ctx.config)) return;
  const env = info.envelope;
  const delayed = dsnRecipients(info, 'deferred', 'delayed');
  try {
    if (delayed.length) {
      const dsnId = await queueDsn(ctx, info, delayed, 'delayed');
      ctx.log.info({ queue_id: env.id, dsn_queue_id: dsnId, to: `<${env.sender}>`, nrcpt: delayed.length },
        `sender delay notification: ${dsnId}`);
    }
    await appendStatus(info.file, [{ type: 'flags', warned: true }]);
  } catch (e) {
    ctx.log.warn({ queue_id: env.id, to: `<${env.sender}>`, err: (e as Error).message },
      'sender delay notification not queued; tried again at the next retry');
  }
}
