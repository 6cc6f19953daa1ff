/**
 * Delivery over LMTP to a server on a Unix socket (our `local`, or Dovecot's
 * lmtp): one session, one transaction, one reply per recipient.
 */
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { connectUnix, openMessage, QueueFileInfo } from '@postern/common';
import { DeliveryResult, dsnOf, oneLine } from './results.js';

export async function deliverByLmtp(info: QueueFileInfo, socketPath: string, relay: string,
  recipients: { index: number; address: string }[], opts: { name: string; timeoutMs: number }): Promise<DeliveryResult[]> {
  const socket = await connectUnix(socketPath);
  const conn = new SMTPConnection({
    connection: socket, lmtp: true, name: opts.name, ignoreTLS: true,
    socketTimeout: opts.timeoutMs, greetingTimeout: 30000, connectionTimeout: 30000, logger: false,
  } as any);
  const deferAll = (reason: string, dsn = '4.4.2'): DeliveryResult[] =>
    recipients.map((r) => ({ index: r.index, status: 'deferred', dsn, reason, relay }));
  try {
    await new Promise<void>((resolve, reject) => {
      conn.once('error', reject);
      conn.connect(() => { conn.off('error', reject); resolve(); });
    });
    const addresses = recipients.map((r) => r.address);
    const result = await new Promise<{ err: any; info: any }>((resolve) => {
      conn.send({ from: info.envelope.sender, to: addresses } as any, openMessage(info) as any,
        (err: any, sent: any) => resolve({ err, info: sent }));
    });
    const rejected: any[] = (result.err?.rejectedErrors ?? result.info?.rejectedErrors ?? []) as any[];
    if (result.err && !result.err.rejectedErrors) {
      const code = result.err.responseCode;
      const permanent = code >= 500;
      return recipients.map((r) => ({ index: r.index, status: permanent ? 'bounced' : 'deferred',
        dsn: dsnOf(result.err.response, code), reason: oneLine(result.err.response || result.err.message), relay }));
    }
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
  } catch (e) {
    const err = e as any;
    if (err.responseCode >= 500) return recipients.map((r) => ({ index: r.index, status: 'bounced', dsn: dsnOf(err.response, err.responseCode), reason: oneLine(err.response), relay }));
    return deferAll(`delivery to ${relay} failed: ${oneLine(err.response || err.message)}`, err.responseCode ? dsnOf(err.response, err.responseCode) : '4.4.2');
  } finally {
    try { conn.quit(); } catch { /* already closed */ }
    setTimeout(() => socket.destroy(), 1000).unref();
  }
}
