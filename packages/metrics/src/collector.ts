/**
 * The counters, derived from the log events master forwards (one JSON line
 * each, classified by common's classifyLogEvent, as `postern stats` does), and
 * the last hour's flow, minute by minute, for the status page.
 */
import { classifyLogEvent } from '@postern/common';
import { Counter, Histogram, Registry } from './registry.js';

/** A line longer than this is not one of ours (they are well under 4 KiB): counted as bad, not parsed. */
export const MAX_EVENT_BYTES = 64 * 1024;

export const FLOW_KINDS = ['received', 'delivered', 'deferred', 'bounced', 'rejected'] as const;
export type FlowKind = typeof FLOW_KINDS[number];

const MINUTE = 60_000;
const FLOW_MINUTES = 60;

/** Seconds: Postfix-like spread from "at once" to "a day in the queue". */
export const DELAY_BUCKETS = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400];

export class Collector {
  readonly registry = new Registry();
  readonly connections = this.registry.add(new Counter('postern_smtpd_connections_total', 'SMTP connections smtpd accepted, by master.cf listener.'));
  readonly received = this.registry.add(new Counter('postern_messages_received_total', 'Messages queued by cleanup (network, sendmail and notifications Postern wrote).'));
  readonly rejected = this.registry.add(new Counter('postern_messages_rejected_total', 'SMTP rejections (one per rejected command), by the restriction or check that rejected.'));
  readonly delivered = this.registry.add(new Counter('postern_recipients_delivered_total', 'Recipients delivered, by transport (smtp, lmtp, local).'));
  readonly deferred = this.registry.add(new Counter('postern_recipients_deferred_total', 'Delivery attempts deferred, per recipient, by transport (smtp, lmtp, local; qmgr when the agent failed).'));
  readonly bounced = this.registry.add(new Counter('postern_recipients_bounced_total', 'Recipients returned to the sender, by transport (smtp, lmtp, local; cleanup for aliases; qmgr for expired in the queue).'));
  readonly tls = this.registry.add(new Counter('postern_tls_total', 'TLS used: direction="in" smtpd sessions that ended encrypted, direction="out" smtp results received over TLS.',
    [{ direction: 'in' }, { direction: 'out' }]));
  readonly dkimSigned = this.registry.add(new Counter('postern_dkim_signed_total', 'Messages cleanup DKIM-signed.'));
  readonly authFailures = this.registry.add(new Counter('postern_smtpd_auth_failures_total', 'Failed SMTP AUTH attempts, by master.cf listener.'));
  readonly delay = this.registry.add(new Histogram('postern_delivery_delay_seconds', 'Delay from arrival to delivery of each delivered recipient, in seconds.', DELAY_BUCKETS));
  readonly events = this.registry.add(new Counter('postern_metrics_events_total', 'Log events received from master, by outcome (counted: classified; other: not a counted event; bad: not JSON or too long).'));
  readonly dropped = this.registry.add(new Counter('postern_metrics_events_dropped_total', 'Log events master dropped because this service was down or slow.'));

  /** Per minute (epoch minute -> counts), the last FLOW_MINUTES kept. */
  private readonly flow = new Map<number, Record<FlowKind, number>>();

  constructor(private readonly now: () => number = Date.now) {}

  /** One record of master's feed: `L{json}` or `D<n>` (see packages/master/src/metrics-feed.ts). */
  record(rec: string): void {
    if (rec.startsWith('D')) {
      const n = parseInt(rec.slice(1), 10);
      if (n > 0) this.dropped.inc({}, n);
      return;
    }
    if (!rec.startsWith('L') || rec.length > MAX_EVENT_BYTES) { this.events.inc({ outcome: 'bad' }); return; }
    let e: any;
    try { e = JSON.parse(rec.slice(1)); } catch { this.events.inc({ outcome: 'bad' }); return; }
    this.event(e);
  }

  event(e: Record<string, any>): void {
    const ev = classifyLogEvent(e);
    if (!ev || ev.kind === 'removed') { this.events.inc({ outcome: 'other' }); return; }
    this.events.inc({ outcome: 'counted' });
    switch (ev.kind) {
      case 'connect': this.connections.inc({ listener: ev.listener }); break;
      case 'disconnect': if (ev.tls) this.tls.inc({ direction: 'in' }); break;
      case 'auth_failed': this.authFailures.inc({ listener: ev.listener }); break;
      case 'received': this.received.inc(); this.flowAdd('received'); break;
      case 'dkim_signed': this.dkimSigned.inc(); break;
      case 'delivered':
        this.delivered.inc({ transport: ev.transport });
        if (ev.delay !== undefined) this.delay.observe(ev.delay);
        if (ev.tls) this.tls.inc({ direction: 'out' });
        this.flowAdd('delivered');
        break;
      case 'deferred': case 'agent_failed':
        this.deferred.inc({ transport: ev.transport });
        if (ev.tls) this.tls.inc({ direction: 'out' });
        this.flowAdd('deferred');
        break;
      case 'bounced': case 'expired':
        this.bounced.inc({ transport: ev.kind === 'expired' ? 'qmgr' : ev.transport });
        if (ev.tls) this.tls.inc({ direction: 'out' });
        this.flowAdd('bounced');
        break;
      case 'rejected': this.rejected.inc({ reason: ev.restriction ?? 'other' }); this.flowAdd('rejected'); break;
    }
  }

  private flowAdd(kind: FlowKind): void {
    const m = Math.floor(this.now() / MINUTE);
    let row = this.flow.get(m);
    if (!row) {
      row = { received: 0, delivered: 0, deferred: 0, bounced: 0, rejected: 0 };
      this.flow.set(m, row);
      for (const k of this.flow.keys()) if (k <= m - FLOW_MINUTES) this.flow.delete(k);
    }
    row[kind]++;
  }

  /** The last hour, oldest minute first, one row per minute (zeros included). */
  lastHour(): { minute: string; counts: Record<FlowKind, number> }[] {
    const now = Math.floor(this.now() / MINUTE);
    const out = [];
    for (let m = now - FLOW_MINUTES + 1; m <= now; m++) {
      out.push({ minute: new Date(m * MINUTE).toISOString(), counts: { ...(this.flow.get(m) ?? { received: 0, delivered: 0, deferred: 0, bounced: 0, rejected: 0 }) } });
    }
    return out;
  }

  /** The totals the page shows beside the chart. */
  totals(): Record<FlowKind | 'connections' | 'auth_failures' | 'dkim_signed' | 'tls_in' | 'tls_out', number> {
    return {
      received: this.received.total(), delivered: this.delivered.total(), deferred: this.deferred.total(),
      bounced: this.bounced.total(), rejected: this.rejected.total(), connections: this.connections.total(),
      auth_failures: this.authFailures.total(), dkim_signed: this.dkimSigned.total(),
      tls_in: this.tls.value({ direction: 'in' }), tls_out: this.tls.value({ direction: 'out' }),
    };
  }
}

/** Splits master's feed into records, each at most MAX_EVENT_BYTES; a longer one is skipped to its newline. */
export function feedReader(onRecord: (rec: string) => void, onOverlong: () => void): (chunk: Buffer) => void {
  let parts: Buffer[] = [];
  let size = 0;
  let skipping = false;
  return (chunk) => {
    let at = 0;
    for (;;) {
      const nl = chunk.indexOf(10, at);
      const piece = chunk.subarray(at, nl < 0 ? chunk.length : nl);
      if (!skipping) {
        if (size + piece.length > MAX_EVENT_BYTES) { skipping = true; parts = []; size = 0; onOverlong(); } else { parts.push(piece); size += piece.length; }
      }
      if (nl < 0) return;
      if (!skipping && size) onRecord(Buffer.concat(parts).toString('utf8'));
      parts = []; size = 0; skipping = false;
      at = nl + 1;
    }
  };
}
