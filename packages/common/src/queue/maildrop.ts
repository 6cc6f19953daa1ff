/**
 * The maildrop file: what `sendmail` leaves in maildrop/ for pickup
 * (docs/sendmail.md). Format version 1:
 *
 *   {"maildrop":1,"sender":...,"recipients":[...],...}\n    one JSON line
 *   message bytes, every line ending in CRLF
 *
 * sendmail writes it under a name starting with "." and renames it to its final
 * name once it is complete and fsynced, so pickup never sees half a file. Nothing
 * in it speaks for the submitter's identity: pickup takes that from the file's
 * owner uid alone.
 */

export const MAILDROP_VERSION = 1;
/** The JSON line may not be longer than this (a long recipient list fits easily). */
export const MAILDROP_HEADER_LIMIT = 4 * 1024 * 1024;

export interface MaildropHeader {
  maildrop: typeof MAILDROP_VERSION;
  /** -f / -r as given (maybe unqualified, '' for the null sender); null: the submitter's own address. */
  sender: string | null;
  /** As given (maybe unqualified): pickup appends @$myorigin. */
  recipients: string[];
  /** -F: the From: header's display name (already applied to the message). */
  fullname?: string;
  /** -t: recipients were taken from To:/Cc:/Bcc: and Bcc: removed (already applied). */
  extract?: boolean;
  /** -i / -oi: a lone "." did not end the input (already applied). */
  ignoreDots?: boolean;
  /** DSN: -N (NEVER or SUCCESS, DELAY, FAILURE), -R (FULL or HDRS), -V (envelope id). */
  notify?: string[];
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

/** sendmail's temporary names start with a dot; pickup takes only final names. */
export function isMaildropTempName(name: string): boolean {
  return name.startsWith('.');
}

/** Why an envelope address cannot be used, or null. Unqualified (no @) is fine: pickup qualifies it. */
export function envelopeAddressProblem(address: string, isSender = false): string | null {
  if (address === '') return isSender ? null : 'empty address';
  if (address.length > 1000) return 'address too long';
  if (/[\s<>\x00-\x1f\x7f]/.test(address)) return 'white space, control characters or <> in the address';
  if (address.startsWith('@') || address.endsWith('@')) return 'empty local part or domain';
  return null;
}

/** Postfix's append_at_myorigin: `user` becomes `user@$myorigin`. */
export function qualifyAddress(address: string, myorigin: string): string {
  return address === '' || address.includes('@') ? address : `${address}@${myorigin}`;
}

export const DSN_NOTIFY = ['NEVER', 'SUCCESS', 'DELAY', 'FAILURE'];

export function formatMaildropHeader(h: MaildropHeader): Buffer {
  return Buffer.from(JSON.stringify(h) + '\n');
}

/** Parse and check the JSON line; throws an Error saying what is wrong. */
export function parseMaildropHeader(line: string): MaildropHeader {
  let h: any;
  try { h = JSON.parse(line); } catch { throw new Error('header line is not JSON'); }
  if (!h || typeof h !== 'object' || Array.isArray(h)) throw new Error('header line is not a JSON object');
  if (h.maildrop !== MAILDROP_VERSION) throw new Error(`unknown maildrop format version ${JSON.stringify(h.maildrop)}`);
  if (h.sender !== null && typeof h.sender !== 'string') throw new Error('sender is neither a string nor null');
  if (typeof h.sender === 'string') {
    const bad = envelopeAddressProblem(h.sender, true);
    if (bad) throw new Error(`sender: ${bad}`);
  }
  if (!Array.isArray(h.recipients) || !h.recipients.length) throw new Error('no recipients');
  for (const r of h.recipients) {
    if (typeof r !== 'string') throw new Error('a recipient is not a string');
    const bad = envelopeAddressProblem(r);
    if (bad) throw new Error(`recipient ${JSON.stringify(r.slice(0, 100))}: ${bad}`);
  }
  if (h.fullname !== undefined && typeof h.fullname !== 'string') throw new Error('fullname is not a string');
  if (h.notify !== undefined && (!Array.isArray(h.notify) || !h.notify.every((n: unknown) => typeof n === 'string' && DSN_NOTIFY.includes(n)))) {
    throw new Error('notify is not a list of NEVER, SUCCESS, DELAY, FAILURE');
  }
  if (h.ret !== undefined && h.ret !== 'FULL' && h.ret !== 'HDRS') throw new Error('ret is neither FULL nor HDRS');
  if (h.envid !== undefined && (typeof h.envid !== 'string' || /[\s\x00-\x1f\x7f]/.test(h.envid) || h.envid.length > 100)) {
    throw new Error('envid is not a short printable string');
  }
  return h as MaildropHeader;
}
