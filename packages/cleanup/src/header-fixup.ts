/**
 * Message fix-up for submitted mail, as Postfix's cleanup does it: learn which
 * header fields the message has and add the missing ones (Message-ID:, Date:)
 * at the end of the primary header section. The header section is held back
 * while it streams in (at most HEADER_SCAN_LIMIT bytes), so the added fields
 * can go where Postfix puts them; the body passes straight through.
 */

/** Header sections larger than this are passed on untouched and unexamined. */
export const HEADER_SCAN_LIMIT = 1024 * 1024;

export interface HeaderSummary {
  /** Lower-case names of the header fields present. */
  names: Set<string>;
  /** Unfolded values of the From: fields. */
  from: string[];
  /** Unfolded value of the first Message-ID: field. */
  messageId?: string;
  /** False when the header section exceeded the scan limit: nothing above is known. */
  complete: boolean;
  /** The message as written has an empty line between header and body. */
  hasSeparator: boolean;
  /** The message's last byte is a line feed (or the message is empty). */
  endsWithNewline: boolean;
}

/** Header lines to add (without line endings), given what the message has. */
export type MissingHeaders = (summary: HeaderSummary) => string[];

const FIELD_RE = /^[\x21-\x39\x3b-\x7e]+[ \t]*:/;

export class HeaderFixup {
  private buf = Buffer.alloc(16 * 1024);
  private len = 0;
  /** Start of the first line not yet classified. */
  private lineStart = 0;
  private sawField = false;
  private passing = false;
  private lastByte = -1;
  summary: HeaderSummary | null = null;
  /** The header lines that were added, for the log. */
  added: string[] = [];

  constructor(private readonly missing: MissingHeaders, private readonly limit = HEADER_SCAN_LIMIT) {}

  /** Message bytes in; bytes to write out (nothing while the header section is held back). */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length) this.lastByte = chunk[chunk.length - 1];
    if (this.passing) return [chunk];
    this.hold(chunk);
    for (;;) {
      const lf = this.buf.subarray(0, this.len).indexOf(10, this.lineStart);
      if (lf < 0 || lf >= this.limit) break;
      const boundary = this.classify(this.lineStart, lf + 1);
      if (boundary !== null) return this.release(boundary.at, boundary.blank);
      this.lineStart = lf + 1;
    }
    if (this.len > this.limit) {
      // too big to examine: pass it on as it came
      this.summary = { names: new Set(), from: [], complete: false, hasSeparator: true, endsWithNewline: true };
      this.passing = true;
      return [this.take()];
    }
    return [];
  }

  /** End of the message: whatever is still held, fixed up. */
  end(): Buffer[] {
    if (this.passing) {
      if (this.summary) this.summary.endsWithNewline = this.lastByte < 0 || this.lastByte === 10;
      return [];
    }
    // a last line without a line feed is classified like any other
    if (this.lineStart < this.len) {
      const boundary = this.classify(this.lineStart, this.len);
      if (boundary !== null) return this.release(boundary.at, boundary.blank);
    }
    return this.release(this.len, false);
  }

  private hold(chunk: Buffer): void {
    if (this.len + chunk.length > this.buf.length) {
      const bigger = Buffer.alloc(Math.max(this.buf.length * 2, this.len + chunk.length));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    chunk.copy(this.buf, this.len);
    this.len += chunk.length;
  }

  private take(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.len));
    this.buf = Buffer.alloc(0);
    this.len = 0;
    return out;
  }

  /** Does the line [start, end) end the header section? Where, and is it the empty line? */
  private classify(start: number, end: number): { at: number; blank: boolean } | null {
    const line = this.buf.toString('latin1', start, end).replace(/\r?\n$/, '');
    if (line === '' || line === '\r') return { at: start, blank: true };
    if (/^[ \t]/.test(line) && this.sawField) return null; // folded continuation
    if (FIELD_RE.test(line)) { this.sawField = true; return null; }
    return { at: start, blank: false }; // not a header line: the body starts without an empty line
  }

  /** The header section is [0, at): summarise it, add what is missing, let everything go. */
  private release(at: number, blank: boolean): Buffer[] {
    const held = this.take();
    const header = held.subarray(0, at);
    const rest = held.subarray(at);
    const summary = summarise(header);
    summary.hasSeparator = blank;
    summary.endsWithNewline = this.lastByte < 0 || this.lastByte === 10;
    this.summary = summary;
    this.passing = true;
    this.added = this.missing(summary);
    if (!this.added.length) return [held];
    // CRLF, as in the queue, unless the message's own lines end in a bare LF
    const firstLf = header.indexOf(10);
    const eol = firstLf > 0 && header[firstLf - 1] !== 13 ? '\n' : '\r\n';
    const needsEol = header.length > 0 && header[header.length - 1] !== 10;
    // a body that starts without the empty line gets one, so it is not read as part of our header
    const separator = !blank && rest.length ? eol : '';
    if (separator) summary.hasSeparator = true;
    if (!rest.length) summary.endsWithNewline = true;
    const insert = Buffer.from((needsEol ? eol : '') + this.added.map((h) => h + eol).join('') + separator, 'utf8');
    return [header, insert, rest].filter((b) => b.length);
  }
}

/** Names present, From: values, the Message-ID, from a complete header section. */
export function summarise(header: Buffer): HeaderSummary {
  const names = new Set<string>();
  const from: string[] = [];
  let messageId: string | undefined;
  const fields: string[] = [];
  for (const line of header.toString('utf8').split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1] += line;
    else if (line) fields.push(line);
  }
  for (const f of fields) {
    const colon = f.indexOf(':');
    if (colon < 0) continue;
    const name = f.slice(0, colon).trim().toLowerCase();
    const value = f.slice(colon + 1).trim();
    names.add(name);
    if (name === 'from') from.push(value);
    else if (name === 'message-id' && messageId === undefined) messageId = value;
  }
  return { names, from, messageId, complete: true, hasSeparator: false, endsWithNewline: true };
}

const two = (n: number) => String(n).padStart(2, '0');

/** Postfix's form: <YYYYMMDDhhmmss.QUEUEID@myhostname>, the time in UTC. */
export function makeMessageId(queueId: string, arrival: Date, hostname: string): string {
  const d = arrival;
  const stamp = `${d.getUTCFullYear()}${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}`;
  return `<${stamp}.${queueId}@${hostname}>`;
}

/**
 * Postfix's rule: a message with Resent- fields is being re-sent, so what must
 * be there is Resent-Message-ID: and Resent-Date:, not the originals.
 */
export function missingHeaders(s: HeaderSummary, queueId: string, arrival: Date, hostname: string, date: string): string[] {
  if (!s.complete) return [];
  const resent = [...s.names].some((n) => n.startsWith('resent-')) ? 'Resent-' : '';
  const out: string[] = [];
  if (!s.names.has(`${resent.toLowerCase()}message-id`)) out.push(`${resent}Message-ID: ${makeMessageId(queueId, arrival, hostname)}`);
  if (!s.names.has(`${resent.toLowerCase()}date`)) out.push(`${resent}Date: ${date}`);
  return out;
}
