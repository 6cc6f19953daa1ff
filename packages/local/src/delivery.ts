/**
 * One recipient's delivery as LMTP answers it: picks the user's mailbox
 * (Maildir or mbox), puts Return-Path: and Delivered-To: in front of the
 * message, writes it, logs it, and turns the outcome into the recipient's
 * reply (`250 2.0.0`, or `451 4.2.0` / `554 5.2.0` from a MailboxError).
 * Reads the message through the `open` it is given; never the queue.
 * A delivery is logged by the caller, in one line: the LMTP server as
 * `delivered to maildir|mbox`, the qmgr server inside its status line (as
 * Postfix's virtual(8) logs one line per recipient).
 */
import { UserInfo, Logger, mailboxOf, headerSafe, smtpError } from '@postern/common';
import { MailboxError } from './errors.js';
import { deliverToMaildir } from './maildir.js';
import { deliverToMbox } from './mbox.js';
import type { DeliveryInput } from './message-stream.js';

export interface RecipientDelivery {
  rcpt: string;
  entry: UserInfo;
  /** Envelope sender, '' for the null sender. */
  sender: string;
  /** A fresh stream of the message each call (CRLF line endings, as the client sent it). */
  open(): NodeJS.ReadableStream;
  lockTimeoutMs: number;
  log: Logger;
  /** The queue id, when qmgr asked directly (local.qmgr): on the line logged here (a failed mailbox write). */
  queueId?: string;
}

/** A written mailbox: the 250 reply text, and what the delivery's log line says about the mailbox. */
export interface MailboxDelivery {
  reply: string;
  /** `delivered to maildir` or `delivered to mbox`. */
  what: string;
  fields: { mailbox: string; size: number; locks?: string };
}

const myUid = process.getuid!();

/** Delivers to one recipient; resolves to its reply and log fields, rejects with its SMTP error (logged here). */
export async function deliverToRecipient(d: RecipientDelivery): Promise<MailboxDelivery> {
  const { rcpt, entry, sender, log } = d;
  // a field, not a child logger: no logger made per delivery
  const qid = d.queueId ? { queue_id: d.queueId } : {};
  if (myUid !== 0 && entry.uid !== null && entry.uid !== myUid) {
    throw smtpError(451, '4.3.0', `<${rcpt}>: mailbox belongs to uid ${entry.uid} but local runs as uid ${myUid}`);
  }
  const box = mailboxOf(entry);
  const input: DeliveryInput = {
    prefix: Buffer.from(`Return-Path: <${headerSafe(sender)}>\r\nDelivered-To: ${headerSafe(rcpt)}\r\n`),
    open: d.open, sender, arrival: new Date(), uid: entry.uid, gid: entry.gid,
  };
  const delivered = (what: string, fields: MailboxDelivery['fields']): MailboxDelivery => ({ reply: `2.0.0 <${rcpt}> ${what}`, what, fields });
  try {
    if (box.format === 'mbox') {
      const r = await deliverToMbox(box.path, input, { lockTimeoutMs: d.lockTimeoutMs });
      return delivered('delivered to mbox', { mailbox: box.path, size: r.size, locks: r.locks.join('+') });
    }
    const r = await deliverToMaildir(box.path, input);
    return delivered('delivered to maildir', { mailbox: r.path, size: r.size });
  } catch (e) {
    const temporary = !(e instanceof MailboxError) || e.temporary;
    log.warn({ ...qid, to: `<${rcpt}>`, mailbox: box.path, err: (e as Error).message }, 'mailbox delivery failed');
    throw temporary ? smtpError(451, '4.2.0', `<${rcpt}>: cannot write mailbox: ${(e as Error).message}`)
      : smtpError(554, '5.2.0', `<${rcpt}>: cannot write mailbox: ${(e as Error).message}`);
  }
}
