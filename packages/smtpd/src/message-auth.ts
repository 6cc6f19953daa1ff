/**
 * Message authentication of mail from outside (mailauth): SPF for the MAIL
 * FROM domain (the HELO name when MAIL FROM is null), every DKIM signature,
 * DMARC alignment and policy, the ARC chain. The message streams into mailauth
 * as smtpd passes it to cleanup; at the end of DATA the results become one
 * `Authentication-Results:` header with our host name as authserv-id
 * (RFC 8601), envelope notes for qmgr's backscatter rule, and, when the
 * sender's domain asks for it, a DMARC rejection or quarantine mark.
 * Every lookup goes through the project's DNS layer. A failure here (a bug,
 * an overlong DNS stall) costs no message: it passes unauthenticated, logged.
 * A From: header longer than FROM_PARSE_LIMIT is never handed to mailauth
 * (address parsers have been quadratic on such input, and smtpd serves every
 * client in one event loop): SPF alone is checked, DKIM and DMARC are permerror.
 */
import { PassThrough } from 'node:stream';
import { authenticate } from 'mailauth';
import { spf as checkSpf } from 'mailauth/lib/spf';
import type { AuthenticateResult, DKIMResult } from 'mailauth';
import { sharedResolver, smtpError, SmtpError } from '@postern/common';
import type { CheckContext, MessageObserver, ObserverVerdict } from './observer.js';

/**
 * The whole check (all DNS lookups included) must end within this. Each
 * lookup is bounded by dns_timeout already; this bounds a message with many
 * signatures or a long SPF include chain against silent DNS servers.
 */
const AUTH_TIME_LIMIT_MS = 120_000;

/**
 * The longest From: header (all From: fields of the message together, folded
 * lines included) message authentication parses. A real author field is a
 * few hundred bytes; RFC 5322 lines end at 998.
 */
export const FROM_PARSE_LIMIT = 8192;

/**
 * Measures the From: fields as the header section streams by, without
 * holding it: the bytes of every field named From (continuation lines
 * included), up to the blank line that ends the header section.
 */
export class FromFieldMeter {
  fromBytes = 0;
  private done = false;
  private lineStart = true;
  private name = '';
  /** Inside a field's name (before its colon). */
  private naming = false;
  private inFrom = false;

  /** Feeds one chunk; true once the From: fields are longer than `limit`. */
  feed(chunk: Buffer, limit: number): boolean {
    for (let i = 0; i < chunk.length && !this.done; i++) {
      const c = chunk[i];
      if (this.lineStart) {
        this.lineStart = false;
        if (c === 0x0d || c === 0x0a) { this.done = true; break; } // the blank line: the body follows
        if (c !== 0x20 && c !== 0x09) { this.inFrom = false; this.naming = true; this.name = ''; } // a new field
      }
      if (c === 0x0a) this.lineStart = true;
      if (this.naming) {
        if (c === 0x3a) {
          this.naming = false;
          this.inFrom = this.name.trim().toLowerCase() === 'from';
          if (this.inFrom) this.fromBytes += this.name.length; // the name, counted now that it is known
        }
        else if (this.name.length < 16) this.name += String.fromCharCode(c);
      }
      if (this.inFrom) this.fromBytes++;
    }
    return this.fromBytes > limit;
  }
}

/** The header a DMARC quarantine adds, for Sieve or the MUA to file the message as junk. */
export const QUARANTINE_HEADER = 'X-Postern-Quarantine';

/** What the queue file's envelope records (Envelope.auth): what no-backscatter decides on. */
export interface AuthNotes {
  spf: string;
  /** A DKIM signature passed and its d= domain aligns with the From: domain. */
  dkimAligned: boolean;
  dmarc: string;
}

// ------------------------------------------------------------ header formatting (RFC 8601)

/** A property value as RFC 8601 wants it: a token, or a quoted string; no control characters. */
function propValue(v: string): string {
  const s = v.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return /^[^\s\x00-\x1f\x7f()<>,;:\\"/[\]?=]+$/.test(s) ? s : `"${s.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

function comment(v: string): string {
  return `(${v.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim().replace(/[\\()]/g, (c) => `\\${c}`)})`;
}

/** A signature's result; a body hash mismatch is a failure (RFC 6376 6.1.3), not mailauth's neutral. */
function dkimOutcome(r: DKIMResult): string {
  const st = r.status as DKIMResult['status'] & { comment?: string };
  return st.result === 'neutral' && st.comment === 'body hash did not verify' ? 'fail' : st.result || 'none';
}

/**
 * One resinfo per DKIM signature, naming the signing domain as header.d (RFC
 * 8601 2.7.1). A body hash mismatch is `fail`: RFC 6376 6.1.3 makes it a
 * permanent failure (mailauth reports it as neutral).
 */
export function dkimResinfo(r: DKIMResult): string {
  const st = r.status as DKIMResult['status'] & { comment?: string; header?: Record<string, string | false>; policy?: Record<string, string> };
  const parts = [`dkim=${dkimOutcome(r)}`];
  if (st.comment) parts.push(comment(st.comment));
  if (r.signingDomain) parts.push(`header.d=${propValue(r.signingDomain)}`);
  if (r.selector) parts.push(`header.s=${propValue(r.selector)}`);
  if (st.header?.a) parts.push(`header.a=${propValue(String(st.header.a))}`);
  // the first characters of the signature tell signatures of one domain apart (RFC 6008)
  if (st.header?.b) parts.push(`header.b=${propValue(String(st.header.b))}`);
  for (const [k, v] of Object.entries(st.policy ?? {})) parts.push(`policy.${k}=${propValue(String(v))}`);
  return parts.join(' ');
}

/** Fold at spaces so no line of the header grows past 78 characters where a space allows. */
function fold(first: string, resinfos: string[]): string {
  const lines: string[] = [first];
  resinfos.forEach((info, i) => {
    let line = '\t';
    for (const word of `${info}${i < resinfos.length - 1 ? ';' : ''}`.split(' ')) {
      if (line.length > 1 && line.length + 1 + word.length > 78) { lines.push(line); line = `\t  ${word}`; }
      else line = line.length > 1 ? `${line} ${word}` : `\t${word}`;
    }
    lines.push(line);
  });
  return lines.join('\r\n') + '\r\n';
}

/** The resinfos of one authentication: spf, every dkim signature, dmarc, arc. */
export function resinfos(res: AuthenticateResult): string[] {
  const out: string[] = [];
  out.push(res.spf ? (res.spf as { info: string }).info : 'spf=none');
  const sigs = res.dkim?.results?.length ? res.dkim.results : [];
  out.push(...(sigs.length ? sigs.map(dkimResinfo) : ['dkim=none (message not signed)']));
  if (res.dmarc) out.push((res.dmarc as { info: string }).info);
  else out.push(`dmarc=permerror ${comment(`${res.dkim?.headerFrom?.length ?? 0} From: addresses; DMARC needs exactly one`)}`);
  // mailauth writes no arc resinfo when there is no chain
  const arc = res.arc as { info?: string; status?: { result?: string } } | false;
  out.push(arc && arc.info ? arc.info : `arc=${(arc && arc.status?.result) || 'none'}`);
  return out;
}

export function authenticationResultsHeader(hostname: string, res: AuthenticateResult): string {
  return fold(`Authentication-Results: ${hostname};`, resinfos(res));
}

// ------------------------------------------------------------ policy

export interface AuthPolicy {
  dmarcReject: boolean;
  dmarcQuarantine: boolean;
  spfHardfailReject: boolean;
}

export interface AuthDecision {
  reject?: SmtpError;
  quarantine?: string;
  /** Why, for the log. */
  reason?: string;
}

/**
 * What the sender's domain asks us to do with this message. DMARC pct
 * sampling (RFC 7489 6.6.4): a message outside the sample gets the next
 * milder policy. p=reject with rejection turned off is handled as quarantine.
 */
export function decide(res: AuthenticateResult, policy: AuthPolicy, clientIp: string, random = Math.random): AuthDecision {
  const spf = res.spf ? res.spf.status.result : 'none';
  if (policy.spfHardfailReject && spf === 'fail' && res.spf) {
    const domain = res.spf.domain;
    return {
      reject: smtpError(550, '5.7.23', `Rejected by SPF policy for ${domain}: ${clientIp} is not a permitted sender`),
      reason: `SPF fail for ${domain}`,
    };
  }
  const dmarc = res.dmarc as (AuthenticateResult['dmarc'] & { status?: { result?: string; header?: { d?: string } } }) | false;
  if (!dmarc || dmarc.status?.result !== 'fail') return {};
  const domain = dmarc.status?.header?.d || dmarc.domain;
  let p = String(dmarc.policy || 'none').toLowerCase();
  const pct = typeof dmarc.pct === 'number' ? dmarc.pct : 100;
  if (pct < 100 && random() * 100 >= pct) p = p === 'reject' ? 'quarantine' : 'none';
  if (p === 'reject' && !policy.dmarcReject) p = 'quarantine';
  if (p === 'reject') {
    return { reject: smtpError(550, '5.7.1', `Rejected by DMARC policy for ${domain}`), reason: `DMARC p=reject for ${domain}` };
  }
  if (p === 'quarantine' && policy.dmarcQuarantine) {
    return { quarantine: `${QUARANTINE_HEADER}: dmarc (policy of ${domain})\r\n`, reason: `DMARC p=quarantine for ${domain}` };
  }
  return {};
}

export function authNotes(res: AuthenticateResult): AuthNotes {
  return {
    spf: res.spf ? res.spf.status.result : 'none',
    dkimAligned: (res.dkim?.results ?? []).some((r) => r.status?.result === 'pass' && !!r.status.aligned),
    dmarc: res.dmarc ? (res.dmarc as { status?: { result?: string } }).status?.result ?? 'none' : 'permerror',
  };
}

// ------------------------------------------------------------ the observer

export function createMessageAuth(c: CheckContext): MessageObserver {
  const { session, config, log } = c;
  const hostname = config.get('myhostname');
  const cap = config.int('message_size_limit');
  const clientIp = session.remoteAddress.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
  const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
  const input = new PassThrough();
  let seen = 0;
  let stopped = false;
  const started = Date.now();
  const meter = new FromFieldMeter();
  /** The From: fields were over FROM_PARSE_LIMIT: mailauth saw none of the message. */
  let fromTooLong = false;
  const resolver = sharedResolver(config).mailauthResolver();
  const helo = session.hostNameAppearsAs || undefined;

  const result: Promise<AuthenticateResult | Error> = authenticate(input, {
    ip: clientIp,
    helo,
    sender: sender || undefined, // null MAIL FROM: mailauth checks postmaster@HELO (RFC 7208 2.4)
    mta: hostname,
    resolver,
    trustReceived: false,
    disableBimi: true,
  }).catch((e: Error) => e);

  /** SPF alone, as mailauth's authenticate() would ask it, for a message it must not parse. */
  const spfOnly = async (): Promise<AuthenticateResult | Error> => {
    const h = helo || clientIp;
    const res = await checkSpf({ ip: clientIp, helo: /^[\d.]+$|:/.test(h) ? `[${h}]` : h, sender: sender || undefined, mta: hostname, resolver } as any)
      .catch((e: Error) => e);
    if (res instanceof Error) return res;
    return { spf: res, dkim: { headerFrom: [], results: [] }, dmarc: false, arc: false, bimi: false, receivedChain: [] } as unknown as AuthenticateResult;
  };

  return {
    write(chunk) {
      if (stopped) return;
      seen += chunk.length;
      // smtpd rejects an oversized message anyway; do not buffer beyond the limit for it
      if (seen > cap) { stopped = true; input.end(); return; }
      // measured before mailauth sees the chunk, so an overlong From: never reaches its parser
      if (meter.feed(chunk, FROM_PARSE_LIMIT)) {
        stopped = true;
        fromTooLong = true;
        input.destroy(new Error('From: header too long'));
        return;
      }
      input.write(chunk);
    },

    async finish(): Promise<ObserverVerdict> {
      if (!stopped) { stopped = true; input.end(); }
      let timer: NodeJS.Timeout | undefined;
      const limit = new Promise<Error>((resolve) => {
        timer = setTimeout(() => resolve(new Error(`no result within ${AUTH_TIME_LIMIT_MS / 1000} s`)), AUTH_TIME_LIMIT_MS);
      });
      const res = await Promise.race([fromTooLong ? spfOnly() : result, limit]).finally(() => clearTimeout(timer));
      const client = `${session.clientHostname && !/^\[/.test(session.clientHostname) ? session.clientHostname : 'unknown'}[${session.remoteAddress}]`;
      if (res instanceof Error) {
        log.warn({ client, from: `<${sender}>`, err: res.message }, 'message authentication failed; message passes unauthenticated');
        return {};
      }
      const notes = authNotes(res);
      const decision = decide(res, {
        dmarcReject: config.bool('smtpd_dmarc_reject'),
        dmarcQuarantine: config.bool('smtpd_dmarc_quarantine'),
        spfHardfailReject: config.bool('smtpd_spf_hardfail_reject'),
      }, clientIp);
      log.info({
        client, from: `<${sender}>`, spf: notes.spf, ...(fromTooLong ? { from_header_bytes: `>${FROM_PARSE_LIMIT}` } : {}),
        dkim: (res.dkim?.results ?? []).filter((r) => r.signingDomain).map((r) => `${dkimOutcome(r)}:${r.signingDomain}`).join(',') || 'none',
        dkim_aligned: notes.dkimAligned, dmarc: notes.dmarc, arc: res.arc ? res.arc.status?.result : 'none',
        action: decision.reject ? 'reject' : decision.quarantine ? 'quarantine' : 'accept', reason: decision.reason,
        ms: Date.now() - started,
      }, 'message authentication');
      if (decision.reject) return { reject: decision.reject };
      const header = fromTooLong ? fold(`Authentication-Results: ${hostname};`, [
        (res.spf as { info: string }).info,
        `dkim=permerror ${comment(`not verified: From: header longer than ${FROM_PARSE_LIMIT} bytes`)}`,
        `dmarc=permerror ${comment(`From: header longer than ${FROM_PARSE_LIMIT} bytes`)}`,
        'arc=none',
      ]) : authenticationResultsHeader(hostname, res);
      return { headers: header + (decision.quarantine ?? ''), notes: { auth: notes } };
    },

    abort() {
      stopped = true;
      input.destroy(new Error('message aborted')); // mailauth's promise settles (with this error), caught above
    },
  };
}
