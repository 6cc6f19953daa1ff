/**
 * TLS-RPT (RFC 8460), the reporting half: the session records of tlsrpt.ts,
 * per recipient domain and UTC day, become one aggregate report in RFC 8460's
 * JSON, gzipped, sent to every rua of the domain's `_smtp._tls` TXT record:
 * mailto: as a multipart/report mail submitted by SMTP to this instance's own
 * smtpd (as any client in mynetworks), https: by POST.
 * Runs as relay_user: in smtp (a timer, finished days) and in `postern tlsrpt`
 * (spawned by the CLI under that account, so root never reads files the
 * unprivileged account can change). Per domain and day a small state file
 * records how many bytes of the records were reported, so a report is sent
 * once; a failed one is tried again at the next run (docs/tlsrpt.md).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as https from 'node:https';
import * as zlib from 'node:zlib';
import { randomUUID, randomBytes } from 'node:crypto';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { MainConfig, Logger, sharedResolver, rfc5322Date, loadMasterCf, parseListenAddress } from '@postern/common';
import { AttemptRecord, TLSRPT_DIR, DOMAIN_RE, DAY_RE, dayOf } from './tlsrpt.js';

interface DayState {
  /** Bytes of DOMAIN.jsonl already reported. */
  reported: number;
  /** End of the last report's date-range (ms), the next one starts there. */
  end?: number;
  reports: { id: string; at: number; to: string[] }[];
}

export interface PolicyCounts {
  policy: { 'policy-type': string; 'policy-string'?: string[]; 'policy-domain': string; 'mx-host'?: string[] };
  summary: { 'total-successful-session-count': number; 'total-failure-session-count': number };
  'failure-details'?: Record<string, unknown>[];
}

/** One report to be sent: a domain, a day, the records not reported yet. */
export interface PendingReport {
  domain: string;
  day: string;
  /** The day is over (UTC): the daily run sends it. */
  complete: boolean;
  start: number;
  end: number;
  /** Byte offset in the records file up to which this report counts. */
  upTo: number;
  policies: PolicyCounts[];
  /** Reports already sent for this day (a `send` before the day ended). */
  sent: number;
}

const DAY_MS = 86400 * 1000;

function dirOf(spoolRoot: string): string { return path.join(spoolRoot, TLSRPT_DIR); }

function readState(file: string): DayState {
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (typeof s.reported === 'number' && Array.isArray(s.reports)) return s;
  } catch { /* none yet, or unreadable: as none */ }
  return { reported: 0, reports: [] };
}

function writeState(file: string, s: DayState): void {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(s) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** Aggregate session records into RFC 8460 policies[] (one entry per distinct policy). */
export function aggregate(domain: string, records: AttemptRecord[]): PolicyCounts[] {
  const by = new Map<string, { p: PolicyCounts; failures: Map<string, Record<string, any>> }>();
  for (const r of records) {
    const key = JSON.stringify([r.policy.type, r.policy.string ?? [], r.policy.mx ?? []]);
    let e = by.get(key);
    if (!e) {
      const policy: PolicyCounts['policy'] = { 'policy-type': r.policy.type, 'policy-domain': domain };
      if (r.policy.string) policy['policy-string'] = r.policy.string;
      if (r.policy.mx) policy['mx-host'] = r.policy.mx;
      e = { p: { policy, summary: { 'total-successful-session-count': 0, 'total-failure-session-count': 0 } }, failures: new Map() };
      by.set(key, e);
    }
    if (r.result === 'success') { e.p.summary['total-successful-session-count']++; continue; }
    e.p.summary['total-failure-session-count']++;
    const fkey = JSON.stringify([r.result, r.sending_ip, r.mx, r.ip, r.reason]);
    let f = e.failures.get(fkey);
    if (!f) {
      f = { 'result-type': r.result, ...(r.sending_ip ? { 'sending-mta-ip': r.sending_ip } : {}), 'receiving-mx-hostname': r.mx,
        'receiving-ip': r.ip, 'failed-session-count': 0, ...(r.reason ? { 'additional-information': r.reason } : {}) };
      e.failures.set(fkey, f);
    }
    f['failed-session-count']++;
  }
  return [...by.values()].map((e) => (e.failures.size ? { ...e.p, 'failure-details': [...e.failures.values()] } : e.p));
}

function parseRecords(buf: Buffer): AttemptRecord[] {
  const out: AttemptRecord[] = [];
  for (const line of buf.toString('utf8').split('\n')) {
    if (!line) continue;
    try {
      const r = JSON.parse(line);
      if (r && r.policy && typeof r.policy.type === 'string' && typeof r.result === 'string' && typeof r.mx === 'string') out.push(r);
    } catch { /* a line cut by a crash: skipped */ }
  }
  return out;
}

/** The reports not sent yet, oldest day first. `now` decides which days are over. */
export function pendingReports(spoolRoot: string, now = Date.now()): PendingReport[] {
  const root = dirOf(spoolRoot);
  const out: PendingReport[] = [];
  let days: string[] = [];
  try { days = fs.readdirSync(root).filter((d) => DAY_RE.test(d)).sort(); } catch { return out; }
  for (const day of days) {
    let names: string[] = [];
    try { names = fs.readdirSync(path.join(root, day)); } catch { continue; }
    for (const n of names.sort()) {
      const domain = n.endsWith('.jsonl') ? n.slice(0, -'.jsonl'.length) : '';
      if (!DOMAIN_RE.test(domain)) continue;
      const file = path.join(root, day, n);
      const state = readState(path.join(root, day, `${domain}.state`));
      // O_NOFOLLOW: only the file smtp appends to, never what a link in its place names
      let buf: Buffer;
      try {
        const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          const st = fs.fstatSync(fd);
          if (!st.isFile() || st.size <= state.reported) continue;
          buf = Buffer.alloc(st.size - state.reported);
          fs.readSync(fd, buf, 0, buf.length, state.reported);
        } finally { fs.closeSync(fd); }
      } catch { continue; }
      // only whole lines: one being appended right now goes into the next report
      const cut = buf.lastIndexOf(0x0a) + 1;
      if (!cut) continue;
      const records = parseRecords(buf.subarray(0, cut));
      const dayStart = Date.parse(`${day}T00:00:00Z`);
      const complete = now >= dayStart + DAY_MS;
      out.push({
        domain, day, complete, start: state.end ?? dayStart, end: complete ? dayStart + DAY_MS - 1000 : now,
        upTo: state.reported + cut, policies: aggregate(domain, records), sent: state.reports.length,
      });
    }
  }
  return out;
}

/** RFC 8460 3: `v=TLSRPTv1; rua=URI[,URI]`; exactly one such record, else none. */
export function parseTlsrptRecord(txts: string[]): string[] | null {
  const recs = txts.filter((t) => /^v=TLSRPTv1\s*(;|$)/.test(t));
  if (recs.length !== 1) return null;
  const m = /(?:^|;)\s*rua=([^;]*)/.exec(recs[0]);
  if (!m) return null;
  const uris = m[1].split(',').map((u) => u.trim()).filter((u) => /^(mailto:[^\s@]+@[^\s@]+|https:\/\/\S+)$/i.test(u));
  return uris.length ? uris : null;
}

export async function ruaOf(domain: string, config: MainConfig): Promise<string[] | null> {
  const txt = await sharedResolver(config).resolveTxt(`_smtp._tls.${domain}`).catch((e) => {
    if (e && e.temporary === false) return [] as string[][];
    throw e;
  });
  return parseTlsrptRecord(txt.map((parts) => parts.join('')));
}

const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export function reportJson(r: PendingReport, config: MainConfig, reportId: string): object {
  return {
    'organization-name': config.get('tlsrpt_organization'),
    'date-range': { 'start-datetime': iso(r.start), 'end-datetime': iso(r.end) },
    'contact-info': config.get('tlsrpt_contact_info'),
    'report-id': reportId,
    policies: r.policies,
  };
}

/** RFC 8460 5.1: sender!policy-domain!begin!end[!unique-id].json.gz */
export function reportFilename(r: PendingReport, submitter: string, unique: string): string {
  return `${submitter}!${r.domain}!${Math.floor(r.start / 1000)}!${Math.floor(r.end / 1000)}!${unique}.json.gz`;
}

/** RFC 8460 5.3: the report as a multipart/report mail, CRLF lines. */
export function reportMail(r: PendingReport, gz: Buffer, to: string, reportId: string, config: MainConfig): Buffer {
  const submitter = config.get('myhostname');
  const boundary = `----=_tlsrpt_${randomBytes(12).toString('hex')}`;
  const b64 = gz.toString('base64').replace(/.{1,76}/g, '$&\r\n');
  const lines = [
    `From: ${config.get('tlsrpt_sender')}`,
    `To: ${to}`,
    `Date: ${rfc5322Date()}`,
    `Subject: Report Domain: ${r.domain}`,
    ` Submitter: ${submitter}`,
    ` Report-ID: <${reportId}>`,
    `Message-ID: <${reportId}>`,
    `TLS-Report-Domain: ${r.domain}`,
    `TLS-Report-Submitter: ${submitter}`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type="tlsrpt";`,
    ` boundary="${boundary}"`,
    '',
    'This is a multipart message in MIME format.',
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset="us-ascii"',
    'Content-Transfer-Encoding: 7bit',
    '',
    `This is an aggregate TLS report from ${submitter} for ${r.domain}, ${iso(r.start)} to ${iso(r.end)}.`,
    '',
    `--${boundary}`,
    'Content-Type: application/tlsrpt+gzip',
    'Content-Transfer-Encoding: base64',
    'Content-Disposition: attachment;',
    ` filename="${reportFilename(r, submitter, reportId.split('@')[0])}"`,
    '',
  ];
  return Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n'), Buffer.from(b64), Buffer.from(`\r\n--${boundary}--\r\n`)]);
}

/**
 * Where mailed reports are submitted: tlsrpt_smtp_server, else this instance's
 * first plain smtpd listener in master.cf (a wildcard one at 127.0.0.1). The
 * report then travels as any mail from mynetworks does; smtp gains no access
 * to the queue, and pickup keeps refusing maildrop files from service accounts.
 */
export function submissionServer(config: MainConfig): { host: string; port: number } {
  const set = config.get('tlsrpt_smtp_server');
  const l = set ? parseListenAddress(set) : loadMasterCf(config.get('config_directory'))
    .filter((e) => e.type === 'inet' && e.command === 'smtpd' && !e.overrides.size)
    .map((e) => parseListenAddress(e.service)).find(Boolean);
  if (!l) throw new Error(set ? `tlsrpt_smtp_server: cannot parse "${set}"` : 'no smtpd listener in master.cf to submit the report to (set tlsrpt_smtp_server)');
  const wild = !l.host || l.host === '*' || l.host === '0.0.0.0';
  return { host: wild ? '127.0.0.1' : l.host === '::' ? '::1' : l.host!, port: l.port };
}

/** Submit the report mail by SMTP (see submissionServer); resolves once the server said 250 to the message. */
async function submitBySmtp(config: MainConfig, sender: string, rcpt: string, message: Buffer): Promise<string> {
  const { host, port } = submissionServer(config);
  const conn = new SMTPConnection({ host, port, name: config.get('myhostname'), secure: false, opportunisticTLS: true,
    tls: { rejectUnauthorized: false }, connectionTimeout: 30000, greetingTimeout: 30000, socketTimeout: 120000, logger: false } as any);
  try {
    await new Promise<void>((resolve, reject) => { conn.once('error', reject); conn.connect(() => { conn.off('error', reject); conn.on('error', () => undefined); resolve(); }); });
    const info: any = await new Promise((resolve, reject) => conn.send({ from: sender, to: [rcpt] } as any, message, (e: any, i: any) => (e ? reject(e) : resolve(i))));
    return String(info?.response ?? '');
  } catch (e) {
    throw new Error(`submission to ${host}:${port}: ${String((e as any).response || (e as Error).message).replace(/\s+/g, ' ')}`);
  } finally {
    try { conn.quit(); } catch { /* closed */ }
  }
}

/** POST the gzipped report (RFC 8460 5.4), at the address our resolver gives, certificate checked against smtp_tls_CAfile. */
export async function postReport(uri: string, gz: Buffer, config: MainConfig): Promise<void> {
  const u = new URL(uri);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const resolver = sharedResolver(config);
  let addr = host;
  if (!/^[0-9.]+$/.test(host) && !host.includes(':')) {
    const v4 = await resolver.resolveA(host).catch(() => [] as string[]);
    const addrs = v4.length ? v4 : await resolver.resolveAAAA(host).catch(() => [] as string[]);
    if (!addrs.length) throw new Error(`${host} has no address`);
    addr = addrs[0];
  }
  const caFile = config.get('smtp_tls_CAfile');
  const ca = caFile ? fs.readFileSync(caFile) : undefined;
  const timeout = config.seconds('tlsrpt_https_timeout') * 1000;
  await new Promise<void>((resolve, reject) => {
    const req = https.request({
      host: addr, port: u.port ? Number(u.port) : 443, servername: /^[0-9.:]+$/.test(host) ? undefined : host, path: u.pathname + u.search,
      method: 'POST', headers: { host: u.host, 'content-type': 'application/tlsrpt+gzip', 'content-length': gz.length },
      ca, rejectUnauthorized: true, timeout, agent: false,
    }, (res) => {
      res.resume();
      // 2xx is taken; redirects are not followed
      if (res.statusCode && res.statusCode >= 200 && res.statusCode < 300) resolve();
      else reject(new Error(`${uri}: HTTP ${res.statusCode}`));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${uri} within ${timeout} ms`)));
    req.on('error', (e) => reject(new Error(`POST ${uri}: ${(e as Error).message}`)));
    req.end(gz);
  });
}

export interface SendResult { domain: string; day: string; report_id?: string; rua: string[]; sent: string[]; failed: { rua: string; error: string }[]; skipped?: string }

/** A lock so the smtp processes and a `postern tlsrpt send` do not send one report twice. */
function lock(root: string): (() => void) | null {
  const f = path.join(root, '.lock');
  for (let i = 0; i < 2; i++) {
    try {
      fs.writeFileSync(f, String(process.pid), { flag: 'wx', mode: 0o600 });
      return () => { try { fs.unlinkSync(f); } catch { /* gone */ } };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      // a holder killed mid-run leaves the file: stale after ten minutes
      const st = fs.statSync(f, { throwIfNoEntry: false });
      if (st && Date.now() - st.mtimeMs > 10 * 60 * 1000) { try { fs.unlinkSync(f); } catch { /* raced */ } continue; }
      return null;
    }
  }
  return null;
}

/**
 * Send the pending reports: every one (`all`, `postern tlsrpt send`) or the
 * finished days only (the daily run). A report handed to at least one rua is
 * marked sent; one no rua took is tried again next run. A domain without a
 * TLS-RPT record is marked done with nothing sent (there is nobody to tell).
 */
export async function sendReports(config: MainConfig, spoolRoot: string, log: Logger, all: boolean): Promise<SendResult[] | null> {
  const root = dirOf(spoolRoot);
  if (!fs.existsSync(root)) return []; // nothing ever recorded (master makes the directory at start)
  const unlock = lock(root);
  if (!unlock) return null;
  const results: SendResult[] = [];
  try {
    for (const r of pendingReports(spoolRoot)) {
      if (!r.complete && !all) continue;
      const stateFile = path.join(root, r.day, `${r.domain}.state`);
      const state = readState(stateFile);
      const res: SendResult = { domain: r.domain, day: r.day, rua: [], sent: [], failed: [] };
      results.push(res);
      let rua: string[] | null;
      try { rua = await ruaOf(r.domain, config); } catch (e) {
        res.failed.push({ rua: `_smtp._tls.${r.domain}`, error: `TXT lookup failed: ${(e as Error).message}` });
        log.warn({ domain: r.domain, day: r.day, err: (e as Error).message }, 'TLS-RPT: TXT lookup failed; report kept for the next run');
        continue;
      }
      if (!rua) {
        res.skipped = `no TLS-RPT record at _smtp._tls.${r.domain}`;
        writeState(stateFile, { ...state, reported: r.upTo, end: r.end + 1000 });
        log.info({ domain: r.domain, day: r.day }, 'TLS-RPT: no TLS-RPT record; nothing to send');
        continue;
      }
      res.rua = rua;
      const reportId = `${randomUUID()}@${config.get('myhostname')}`;
      res.report_id = reportId;
      const gz = zlib.gzipSync(JSON.stringify(reportJson(r, config, reportId)));
      for (const uri of rua) {
        try {
          if (/^mailto:/i.test(uri)) {
            const to = decodeURIComponent(uri.slice(7).split('?')[0]);
            const reply = await submitBySmtp(config, config.get('tlsrpt_sender'), to, reportMail(r, gz, to, reportId, config));
            log.info({ domain: r.domain, day: r.day, report_id: reportId, rua: uri, reply }, 'TLS-RPT report mailed');
          } else {
            await postReport(uri, gz, config);
            log.info({ domain: r.domain, day: r.day, report_id: reportId, rua: uri }, 'TLS-RPT report posted');
          }
          res.sent.push(uri);
        } catch (e) {
          res.failed.push({ rua: uri, error: (e as Error).message });
          log.warn({ domain: r.domain, day: r.day, report_id: reportId, rua: uri, err: (e as Error).message }, 'TLS-RPT report not delivered; kept for the next run');
        }
      }
      if (res.sent.length) {
        writeState(stateFile, { reported: r.upTo, end: r.end + 1000, reports: [...state.reports, { id: reportId, at: Date.now(), to: res.sent }] });
      }
    }
    prune(root, config.int('tlsrpt_retention_days'));
  } finally { unlock(); }
  return results;
}

/** Days older than tlsrpt_retention_days go, sent or not: the records are bounded in time too. */
function prune(root: string, days: number): void {
  const oldest = dayOf(Date.now() - days * DAY_MS);
  let names: string[] = [];
  try { names = fs.readdirSync(root); } catch { return; }
  for (const d of names) if (DAY_RE.test(d) && d < oldest) fs.rmSync(path.join(root, d), { recursive: true, force: true });
}

/** smtp's daily run: finished days, every tlsrpt_check_interval, the first a minute after start. */
export function startReportTimer(config: MainConfig, spoolRoot: string, log: Logger): () => void {
  if (!config.bool('tlsrpt_report_enable')) return () => undefined;
  const run = () => {
    sendReports(config, spoolRoot, log, false).catch((e) => log.warn({ err: (e as Error).message }, 'TLS-RPT report run failed'));
  };
  const first = setTimeout(run, 60 * 1000);
  const every = setInterval(run, Math.max(60, config.seconds('tlsrpt_check_interval')) * 1000);
  first.unref();
  every.unref();
  return () => { clearTimeout(first); clearInterval(every); };
}
