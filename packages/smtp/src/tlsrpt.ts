/**
 * TLS-RPT (RFC 8460), the recording half: each new outbound SMTP session to a
 * recipient domain's MX host leaves one JSON line saying which policy applied
 * (sts, tlsa, no-policy-found) and whether TLS succeeded, or which RFC 8460
 * result-type it failed with. Lines go to the spool's `tlsrpt/DAY/DOMAIN.jsonl`
 * (smtp's own account, 0700), appended with O_APPEND so several smtp processes
 * can share a file; the report (tlsrpt-report.ts) aggregates them. A session is
 * recorded when the line is written: a kill -9 loses at most the line in flight,
 * which a statistical report can bear (docs/tlsrpt.md).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MainConfig, Logger } from '@postern/common';
import { HostPolicy, TlsOutcome } from './tls-policy.js';
import { readCached } from './mta-sts.js';

export const TLSRPT_DIR = 'tlsrpt';
export const DOMAIN_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;
export const DAY_RE = /^\d{4}-\d{2}-\d{2}$/;

/** RFC 8460 4.3 result types Postern can tell apart. */
export type ResultType = 'starttls-not-supported' | 'certificate-host-mismatch' | 'certificate-expired' | 'certificate-not-trusted' | 'validation-failure';

/** One line of a day's file: one session. */
export interface AttemptRecord {
  /** ms since the epoch */
  t: number;
  policy: { type: 'sts' | 'tlsa' | 'no-policy-found'; string?: string[]; mx?: string[] };
  /** 'success', or the failure's result-type */
  result: 'success' | ResultType;
  sending_ip?: string;
  mx: string;
  ip: string;
  /** The failure in our words (additional-information). */
  reason?: string;
}

/** What the smtp client knows after trying one host (remote.ts). */
export interface TlsAttempt {
  domain: string;
  host: string;
  address: string;
  policy: HostPolicy;
  /** checkPeer's outcome, when a session was established */
  outcome?: TlsOutcome;
  /** the STARTTLS or handshake error, when there was one */
  error?: { code?: string; command?: string; message?: string };
  localAddress?: string;
}

const capped = new Set<string>();

export function dayOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The RFC 8460 result-type of a failure in Postern's words (tls-policy.ts checkPeer, nodemailer errors). */
export function resultTypeOf(a: TlsAttempt): ResultType | null {
  const e = a.error;
  if (e) {
    // nodemailer: STARTTLS refused or not offered under requireTLS
    if (e.command === 'STARTTLS' || /STARTTLS/.test(String(e.message))) return 'starttls-not-supported';
    return 'validation-failure';
  }
  const o = a.outcome;
  if (!o) return null;
  if (!o.tls) return a.policy.connect === 'none' ? null : 'starttls-not-supported';
  const f = o.failure;
  if (!f) return null;
  if (/CERT_HAS_EXPIRED|expired/i.test(f)) return 'certificate-expired';
  if (/does not match|does not name/.test(f)) return 'certificate-host-mismatch';
  if (/^DANE: /.test(f)) return 'validation-failure';
  return 'certificate-not-trusted'; // does not verify, no certificate presented
}

function policyOf(a: TlsAttempt, stsCacheDir: string): AttemptRecord['policy'] {
  const p = a.policy;
  if (p.name === 'dane') {
    return { type: 'tlsa', string: (p.tlsa ?? []).map((r) => `${r.usage} ${r.selector} ${r.matchingType} ${r.data.toString('hex')}`), mx: [a.host] };
  }
  if (p.name === 'mta-sts') {
    // the policy as fetched (mta-sts.ts caches it before remote.ts uses it), in the text form RFC 8460 4.4 asks for
    const c = readCached(stsCacheDir, a.domain);
    const mx = c?.mx ?? [];
    return { type: 'sts', string: ['version: STSv1', `mode: ${c?.mode ?? p.sts?.mode}`, ...mx.map((m) => `mx: ${m}`), `max_age: ${c?.maxAge ?? 0}`], mx };
  }
  return { type: 'no-policy-found' };
}

/**
 * Record one session. Never throws and never delays delivery beyond one append:
 * a report is statistics, delivery is the job. Relayhost deliveries are not
 * recorded: they are not sessions with the recipient domain's MX hosts.
 */
export async function recordTlsAttempt(config: MainConfig, log: Logger, spoolRoot: string, queueId: string, a: TlsAttempt): Promise<void> {
  try {
    if (!config.bool('smtp_tlsrpt_enable') || config.get('relayhost')) return;
    if (a.policy.connect === 'none' && a.policy.name === 'none') return; // TLS not attempted: nothing to report
    const domain = a.domain.toLowerCase().replace(/\.$/, '');
    if (!DOMAIN_RE.test(domain)) return; // the domain names a file: plain host names only
    const result = resultTypeOf(a);
    const now = Date.now();
    const rec: AttemptRecord = {
      t: now, policy: policyOf(a, path.join(spoolRoot, 'mta-sts')), result: result ?? 'success',
      ...(a.localAddress ? { sending_ip: a.localAddress } : {}), mx: a.host, ip: a.address,
      ...(result ? { reason: (a.outcome?.failure ?? a.error?.message ?? '').slice(0, 300) } : {}),
    };
    const dir = path.join(spoolRoot, TLSRPT_DIR, dayOf(now));
    await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `${domain}.jsonl`);
    const size = (await fs.promises.stat(file).catch(() => null))?.size ?? 0;
    if (size >= config.int('tlsrpt_max_file_size')) {
      // bounded: beyond the cap a day's sessions for this domain go uncounted (said once per file and process)
      if (!capped.has(file)) {
        capped.add(file);
        log.warn({ queue_id: queueId, domain, file }, 'TLS-RPT: tlsrpt_max_file_size reached; further sessions today are not counted');
      }
      return;
    }
    await fs.promises.appendFile(file, JSON.stringify(rec) + '\n', { mode: 0o600, flag: 'a' });
  } catch (e) {
    log.warn({ queue_id: queueId, domain: a.domain, err: (e as Error).message }, 'TLS-RPT: session not recorded');
  }
}
