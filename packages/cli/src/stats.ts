/**
 * `postern stats [--since 1h] [--json]`: a pflogsumm-style summary of the log
 * (maillog_file, one JSON object per line): received, delivered, deferred,
 * bounced, rejected by reason, top senders, recipients and destinations, delays.
 * The file is streamed with a bound on line length, never read whole.
 */
import * as fs from 'node:fs';
import { Command } from 'commander';
import { MainConfig, parseTimeValue, classifyLogEvent } from '@postern/common';

/** Longer lines are not ours (ours are well under 4 KiB): skipped and counted, never buffered. */
export const MAX_LINE_BYTES = 64 * 1024;
const TOP = 10;

export interface Count { name: string; count: number }
export interface DestinationCount extends Count { avg_delay: number; max_delay: number }

export interface Stats {
  file: string;
  /** ISO time of the oldest line counted with --since; null for the whole log. */
  since: string | null;
  /** Lines read, and those skipped (not JSON, overlong, or without a time when --since is given). */
  lines: number;
  skipped: number;
  /** Messages queued by cleanup (bounces and notifications Postern wrote included). */
  received: number;
  bytes_received: number;
  /** Recipients delivered (status=sent, one per recipient, as pflogsumm counts). */
  delivered: number;
  bytes_delivered: number;
  /** Messages deferred at least once, and the deferral events. */
  deferred: number;
  deferrals: number;
  /** Recipients returned to the sender: bounced by the remote or at cleanup, and expired in the queue. */
  bounced: number;
  expired: number;
  /** SMTP rejections (status=reject), by reason. */
  rejected: number;
  rejected_by_reason: Count[];
  /** Distinct senders of received mail and recipients of delivered mail. */
  senders: number;
  recipients: number;
  top_senders: Count[];
  top_recipients: Count[];
  top_destinations: DestinationCount[];
  /** Delivery delay in seconds (arrival to status=sent), over the delivered recipients. */
  delay: { avg: number; max: number };
}

/** `RCPT 550 5.1.1 Recipient address rejected: User unknown...`, without the client and the address, so reasons group. */
export function rejectReason(msg: string): string {
  const text = msg.replace(/^reject:\s*/, '');
  const m = /^([A-Z][A-Z-]*) from \S+: (\d{3}) (\d\.\d{1,3}\.\d{1,3}) ([\s\S]*)$/.exec(text);
  if (m) return `${m[1]} ${m[2]} ${m[3]} ${m[4].replace(/^<[^>]*>:\s*/, '')}`;
  return text.split(/: | from /)[0];
}

class Counter {
  private readonly m = new Map<string, number>();
  get size(): number { return this.m.size; }
  add(k: string, n = 1): void { this.m.set(k, (this.m.get(k) ?? 0) + n); }
  top(n = TOP): Count[] {
    return [...this.m].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, n).map(([name, count]) => ({ name, count }));
  }
}

const bare = (addr: unknown): string => {
  const s = String(addr ?? '').replace(/^<|>$/g, '');
  return s === '' ? '<>' : s.toLowerCase();
};
const round2 = (n: number): number => Math.round(n * 100) / 100;

/** Whole lines of a file, each at most `max` bytes; longer ones come back as null. */
async function* boundedLines(file: string, max: number): AsyncGenerator<string | null> {
  let parts: Buffer[] = [];
  let size = 0;
  let overlong = false;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 64 * 1024 }) as AsyncIterable<Buffer>) {
    let at = 0;
    for (;;) {
      const nl = chunk.indexOf(10, at);
      const piece = chunk.subarray(at, nl < 0 ? chunk.length : nl);
      if (!overlong) {
        if (size + piece.length > max) { overlong = true; parts = []; size = 0; } else { parts.push(piece); size += piece.length; }
      }
      if (nl < 0) break;
      yield overlong ? null : Buffer.concat(parts).toString('utf8');
      parts = []; size = 0; overlong = false;
      at = nl + 1;
    }
  }
  if (overlong) yield null;
  else if (size) yield Buffer.concat(parts).toString('utf8');
}

export interface StatsOptions { since?: string; now?: number }

export async function logStats(config: MainConfig, o: StatsOptions = {}): Promise<Stats> {
  let cutoff: number | null = null;
  if (o.since !== undefined) {
    const s = parseTimeValue(o.since);
    if (s === null || s === 0) throw new Error(`--since: "${o.since}" is not a duration (a number with s, m, h, d or w, as in main.cf: 30m, 1h, 2d)`);
    cutoff = (o.now ?? Date.now()) - s * 1000;
  }
  const file = config.get('maillog_file');
  if (!file) throw new Error('maillog_file is empty: master logs to its standard output');
  if (!fs.existsSync(file)) throw new Error(`${file}: no log yet`);

  const st: Stats = {
    file, since: cutoff === null ? null : new Date(cutoff).toISOString(), lines: 0, skipped: 0,
    received: 0, bytes_received: 0, delivered: 0, bytes_delivered: 0, deferred: 0, deferrals: 0, bounced: 0, expired: 0,
    rejected: 0, rejected_by_reason: [], senders: 0, recipients: 0, top_senders: [], top_recipients: [], top_destinations: [], delay: { avg: 0, max: 0 },
  };
  const reasons = new Counter();
  const senders = new Counter();
  const recipients = new Counter();
  const destinations = new Map<string, { count: number; sum: number; max: number }>();
  // sizes of messages still in the queue (for bytes delivered): an entry goes when qmgr logs "removed"
  const sizes = new Map<string, number>();
  const deferredIds = new Set<string>();
  let delaySum = 0;

  for await (const line of boundedLines(file, MAX_LINE_BYTES)) {
    st.lines++;
    if (line === null) { st.skipped++; continue; }
    if (!line.trim()) { st.lines--; continue; }
    let e: Record<string, any>;
    try { e = JSON.parse(line); } catch { st.skipped++; continue; }
    if (!e || typeof e !== 'object') { st.skipped++; continue; }
    if (cutoff !== null) {
      const t = Date.parse(String(e.time));
      if (isNaN(t)) { st.skipped++; continue; }
      if (t < cutoff) continue;
    }
    const ev = classifyLogEvent(e);
    if (!ev) continue;
    const id = ev.queue_id;
    switch (ev.kind) {
      case 'received': {
        st.received++;
        const size = Number(e.size) || 0;
        st.bytes_received += size;
        sizes.set(id, size);
        senders.add(bare(e.from));
        break;
      }
      case 'removed': sizes.delete(id); break;
      case 'agent_failed': st.deferrals++; if (id) deferredIds.add(id); break;
      case 'delivered': {
        st.delivered++;
        st.bytes_delivered += sizes.get(id) ?? 0;
        const to = bare(e.to);
        recipients.add(to);
        const domain = to.includes('@') ? to.slice(to.lastIndexOf('@') + 1) : to;
        const delay = Number(e.delay) || 0;
        delaySum += delay;
        st.delay.max = Math.max(st.delay.max, delay);
        const d = destinations.get(domain) ?? { count: 0, sum: 0, max: 0 };
        d.count++; d.sum += delay; d.max = Math.max(d.max, delay);
        destinations.set(domain, d);
        break;
      }
      case 'deferred':
        st.deferrals++;
        if (id) deferredIds.add(id);
        break;
      case 'bounced':
        st.bounced++;
        break;
      case 'expired':
        st.expired++;
        st.bounced++;
        break;
      case 'rejected':
        st.rejected++;
        reasons.add(rejectReason(String(e.msg ?? '')));
        break;
    }
  }
  st.deferred = deferredIds.size;
  st.rejected_by_reason = reasons.top(Infinity);
  st.senders = senders.size;
  st.recipients = recipients.size;
  st.top_senders = senders.top();
  st.top_recipients = recipients.top();
  st.top_destinations = [...destinations].sort((a, b) => b[1].count - a[1].count || a[0].localeCompare(b[0])).slice(0, TOP)
    .map(([name, d]) => ({ name, count: d.count, avg_delay: round2(d.sum / d.count), max_delay: round2(d.max) }));
  st.delay = { avg: st.delivered ? round2(delaySum / st.delivered) : 0, max: round2(st.delay.max) };
  return st;
}

/** The summary as pflogsumm prints it: grand totals, then the tables. */
export function formatStats(st: Stats): string {
  const n = (v: number) => String(v).padStart(8);
  const pct = (v: number, of: number) => (of ? ` (${Math.round((v / of) * 100)}%)` : '');
  const out: string[] = [];
  out.push(`Grand Totals${st.since ? ` since ${st.since}` : ''} (${st.file})`, '------------', 'messages', '');
  out.push(`${n(st.received)}   received`);
  out.push(`${n(st.delivered)}   delivered`);
  out.push(`${n(st.deferred)}   deferred  (${st.deferrals} deferrals)`);
  out.push(`${n(st.bounced)}   bounced${st.expired ? `  (${st.expired} expired)` : ''}`);
  out.push(`${n(st.rejected)}   rejected${pct(st.rejected, st.rejected + st.received)}`);
  out.push('', `${n(st.bytes_received)}   bytes received`, `${n(st.bytes_delivered)}   bytes delivered`);
  out.push(`${n(st.senders)}   senders`, `${n(st.recipients)}   recipients`);
  out.push(`    avg ${st.delay.avg} s, max ${st.delay.max} s   delivery delay`);
  const table = (title: string, rows: string[]) => { out.push('', title, '-'.repeat(title.length), ...(rows.length ? rows : [' none'])); };
  table('Rejected by reason', st.rejected_by_reason.map((r) => `${n(r.count)}   ${r.name}`));
  table('Senders by message count', st.top_senders.map((r) => `${n(r.count)}   ${r.name}`));
  table('Recipients by message count', st.top_recipients.map((r) => `${n(r.count)}   ${r.name}`));
  table('Destinations (delivered, avg delay, max delay)', st.top_destinations.map((r) => `${n(r.count)}   ${String(r.avg_delay).padStart(7)} s ${String(r.max_delay).padStart(7)} s   ${r.name}`));
  if (st.skipped) out.push('', `${st.skipped} line(s) skipped: not JSON, longer than ${MAX_LINE_BYTES} bytes, or without a time`);
  return out.join('\n') + '\n';
}

export function addStatsCommand(program: Command, configDir: () => string): void {
  program.command('stats').description('a pflogsumm-style summary of the log (maillog_file)')
    .option('--since <duration>', 'only lines logged in the last DURATION (30m, 1h, 2d, as main.cf time values)')
    .option('--json', 'one JSON object')
    .action(async (o) => {
      const st = await logStats(MainConfig.load(configDir()), { since: o.since });
      process.stdout.write(o.json ? JSON.stringify(st) + '\n' : formatStats(st));
    });
}
