/**
 * Delivery over LMTP to a server on a Unix socket (our `local`, or Dovecot's
 * lmtp): one transaction, one reply per recipient. Idle sessions are kept for
 * the next message (RSET, then MAIL) — a new LHLO per message is most of the
 * cost of local delivery.
 */
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { connectUnix, openMessage, QueueFileInfo } from '@postern/common';
import { DeliveryResult, dsnOf, oneLine } from './results.js';

const IDLE_MS = 5000;
const idle = new Map<string, { conn: any; timer: NodeJS.Timeout }[]>();

function takeIdle(socketPath: string): any | null {
  const item = idle.get(socketPath)?.pop();
  if (!item) return null;
  clearTimeout(item.timer);
  return item.conn;
}

function putIdle(socketPath: string, conn: any): void {
  const list = idle.get(socketPath) ?? [];
  const entry = { conn, timer: setTimeout(() => { list.splice(list.indexOf(entry), 1); try { conn.quit(); } catch { /* closed */ } }, IDLE_MS) };
  entry.timer.unref();
  list.push(entry);
  idle.set(socketPath, list);
}

async function open(socketPath: string, opts: { name: string; timeoutMs: number }): Promise<any> {
  const reused = takeIdle(socketPath);
  if (reused) {
    const ok = await new Promise<boolean>((r) => reused.reset((err: any) => r(!err)));
    if (ok) return reused;
    try { reused.close(); } catch { /* closed */ }
  }
  const socket = await connectUnix(socketPath);
  const conn = new SMTPConnection({
    connection: socket, lmtp: true, name: opts.name, ignoreTLS: true,
    socketTimeout: opts.timeoutMs, greetingTimeout: 30000, connectionTimeout: 30000, logger: false,
  } as any);
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => { conn.off('error', reject); conn.on('error', () => undefined); resolve(); });
  });
  return conn;
}

export async function deliverByLmtp(info: QueueFileInfo, socketPath: string, relay: string,
  recipients: { index: number; address: string }[], opts: { name: string; timeoutMs: number }): Promise<DeliveryResult[]> {
  let conn: any;
  try {
    conn = await open(socketPath, opts);
  } catch (e) {
    const err = e as any;
    return recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: err.responseCode ? dsnOf(err.response, err.responseCode) : '4.4.2',
      reason: `delivery to ${relay} failed: ${oneLine(err.response || err.message)}`, relay }));
  }
  const result = await new Promise<{ err: any; info: any }>((resolve) => {
    conn.send({ from: info.envelope.sender, to: recipients.map((r) => r.address) } as any, openMessage(info) as any,
      (err: any, sent: any) => resolve({ err, info: sent }));
  });
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
  putIdle(socketPath, conn);
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
