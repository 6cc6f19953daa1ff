/**
 * Delivery over LMTP to a server on a Unix socket or TCP (our `local`, or
 * Dovecot's lmtp): one transaction, one reply per recipient. Idle sessions are kept for
 * the next message — a new LHLO per message is most of the cost of local
 * delivery. A transaction that ended with DATA leaves the server's session reset
 * (RFC 5321 4.1.4), so the next MAIL follows directly; RSET only after one that
 * stopped short.
 */
import * as net from 'node:net';
import * as path from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { connectUnix, openMessage, QueueFileInfo, parseLmtpNexthop, Spool, IdlePool } from '@postern/common';
import { DeliveryResult, dsnOf, oneLine } from './results.js';

const IDLE_MS = 5000;
/** Idle sessions by destination; `clean` when the last transaction ended with DATA (the server has reset the session itself). */
const idle = new IdlePool<any, { clean: boolean }>();

/** Where an LMTP server is: `key` names it for the idle pool and the logs. */
export interface LmtpDestination { key: string; relay: string; connect(timeoutMs: number): Promise<net.Socket> }

/**
 * qmgr's next hop: `local` (private/local), `unix:PATH` (relative to the queue
 * directory, as Postfix's lmtp) or `inet:HOST:PORT`; throws on anything else.
 */
export function lmtpDestination(nexthop: string, spool: Spool, queueDirectory: string): LmtpDestination {
  const t = parseLmtpNexthop(nexthop);
  if (t.kind === 'local') {
    const p = spool.privateSocket('local');
    return { key: p, relay: 'local[private/local]', connect: (ms) => connectUnix(p, ms) };
  }
  if (t.kind === 'unix') {
    const p = path.resolve(queueDirectory, t.path);
    return { key: p, relay: `${path.basename(p)}[${p}]`, connect: (ms) => connectUnix(p, ms) };
  }
  return {
    key: `inet:${t.host}:${t.port}`, relay: `${t.host}[${t.host}]:${t.port}`,
    connect: (ms) => new Promise((resolve, reject) => {
      const s = net.createConnection({ host: t.host, port: t.port });
      const timer = setTimeout(() => { s.destroy(); reject(new Error(`connect to ${t.host}:${t.port}: timed out`)); }, ms);
      s.once('connect', () => { clearTimeout(timer); resolve(s); });
      s.once('error', (e) => { clearTimeout(timer); reject(new Error(`connect to ${t.host}:${t.port}: ${e.message}`)); });
    }),
  };
}

/** A connection for the next transaction; `reused` when it served one before (the server may have closed it meanwhile). */
async function open(dest: LmtpDestination, opts: LmtpOptions, fresh: boolean): Promise<{ conn: any; reused: boolean }> {
  const kept = fresh ? null : idle.take(dest.key);
  if (kept) {
    // after a completed DATA the session is reset already: RSET only after a transaction that stopped short
    if (kept.meta.clean) return { conn: kept.conn, reused: true };
    const ok = await new Promise<boolean>((r) => kept.conn.reset((err: any) => r(!err)));
    if (ok) return { conn: kept.conn, reused: true };
    try { kept.conn.close(); } catch { /* closed */ }
  }
  const socket = await dest.connect(30000);
  const conn = new SMTPConnection({
    connection: socket, lmtp: true, name: opts.name, ignoreTLS: true,
    socketTimeout: opts.timeoutMs, greetingTimeout: 30000, connectionTimeout: 30000, logger: false,
  } as any);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => { conn.off('error', reject); conn.on('error', () => undefined); resolve(); });
  });
  return { conn, reused: false };
}

export interface LmtpOptions { name: string; timeoutMs: number; maxIdle: number }

export async function deliverByLmtp(info: QueueFileInfo, dest: LmtpDestination,
  recipients: { index: number; address: string }[], opts: LmtpOptions): Promise<DeliveryResult[]> {
  const relay = dest.relay;
  let conn: any;
  let result: { err: any; info: any };
  for (let attempt = 0; ; attempt++) {
    let reused: boolean;
    try {
      ({ conn, reused } = await open(dest, opts, attempt > 0));
    } catch (e) {
      const err = e as any;
      return recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: err.responseCode ? dsnOf(err.response, err.responseCode) : '4.4.2',
        reason: `delivery to ${relay} failed: ${oneLine(err.response || err.message)}`, relay }));
    }
    const message = openMessage(info);
    result = await new Promise<{ err: any; info: any }>((resolve) => {
      conn.send({ from: info.envelope.sender, to: recipients.map((r) => r.address) } as any, message as any,
        (err: any, sent: any) => resolve({ err, info: sent }));
    });
    // a kept connection the server closed while idle (it restarted): nothing of this message went out, so a new one may carry it
    const untouched = !message.readableDidRead;
    message.destroy(); // the transaction is over: release the file a stream that was not read to the end still holds
    if (result.err && reused && attempt === 0 && untouched && (!result.err.responseCode || result.err.responseCode === 421)) {
      try { conn.close(); } catch { /* closed */ }
      continue;
    }
    break;
  }
  const rejected: any[] = (result.err?.rejectedErrors ?? result.info?.rejectedErrors ?? []) as any[];
  if (result.err && !result.err.rejectedErrors) {
    try { conn.close(); } catch { /* closed */ }
    const code = result.err.responseCode;
    if (!code) {
      return recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: '4.4.2', reason: `lost connection with ${relay}: ${oneLine(result.err.message)}`, relay }));
    }
    return recipients.map((r) => ({ index: r.index, status: code >= 500 ? 'bounced' : 'deferred',
      dsn: dsnOf(result.err.response, code), reason: oneLine(result.err.response || result.err.message), relay }));
  }
  // never more kept than qmgr lets run at once (lmtp_destination_concurrency_limit): the server's connection count stays capped
  idle.put(dest.key, conn, { clean: !result.err }, IDLE_MS, opts.maxIdle);
  const accepted = new Set<string>((result.info?.accepted ?? []) as string[]);
  return recipients.map((r): DeliveryResult => {
    const rej = rejected.find((e) => e.recipient === r.address);
    if (rej) {
      return { index: r.index, status: rej.responseCode >= 500 ? 'bounced' : 'deferred',
        dsn: dsnOf(rej.response, rej.responseCode), reason: oneLine(rej.response || rej.message), relay };
    }
    if (accepted.has(r.address)) return { index: r.index, status: 'sent', dsn: dsnOf(result.info?.response), reason: oneLine(result.info?.response), relay };
    return { index: r.index, status: 'deferred', dsn: '4.4.2', reason: 'no reply for this recipient', relay };
  });
}
