/**
 * The primary header section of a message, held back while it streams into
 * cleanup (at most header_size_limit bytes) so it can be edited once its end
 * is known: fields dropped (forged Authentication-Results:), missing ones added
 * at its end, where Postfix puts them. Everything else passes through byte for
 * byte; the body is never held.
 */

/** header_size_limit's default (Postfix's): the most of a header section held and examined. */
export const HEADER_SCAN_LIMIT = 102400;

export interface HeaderSummary {
  /** Lower-case names of the header fields present. */
  names: Set<string>;
  /** Unfolded values of the From: fields. */
  from: string[];
  /** Unfolded value of the first Message-ID: field. */
  messageId?: string;
  /** The header section was longer than the limit: it was cut there and the rest became body. */
  truncated: boolean;
  /** How many Received: fields the message brought (the hop count). */
  received: number;
  /** The message as written has an empty line between header and body. */
  hasSeparator: boolean;
  /** The message's last byte is a line feed (or the message is empty). */
  endsWithNewline: boolean;
}

/** Says whether to drop a field, given its lower-case name and its unfolded value. */
export type FieldPredicate = (name: string, value: string) => boolean;

/** Header lines to add (without line endings), given what the message has. */
export type MissingHeaders = (summary: HeaderSummary) => string[];

/**
 * One change to the held header section; they apply in list order. `drop`
 * removes the message's own fields it names; `add` sees a summary of the fields
 * kept so far, and its lines go at the end of the header section.
 */
export type HeaderEdit = { drop: FieldPredicate } | { add: MissingHeaders };

const FIELD_RE = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:/;

export class HeaderSection {
  private buf = Buffer.alloc(16 * 1024);
  private len = 0;
  /** Start of the first line not yet classified. */
  private lineStart = 0;
  private sawField = false;
  private passing = false;
  /** Last byte handed out, for summary.endsWithNewline. */
  private lastByte = -1;
  /** What the message has, once the header section has been let go. */
  summary: HeaderSummary | null = null;
  /** The fields dropped, unfolded, for the log. */
  removed: string[] = [];
  /** The header lines added, for the log. */
  added: string[] = [];

  constructor(private readonly edits: HeaderEdit[], private readonly limit = HEADER_SCAN_LIMIT) {}

  /** Message bytes in; bytes to write out (nothing while the header section is held back). */
  push(chunk: Buffer): Buffer[] {
    if (this.passing) {
      if (chunk.length) this.lastByte = chunk[chunk.length - 1];
      return [chunk];
    }
    this.hold(chunk);
    for (;;) {
      const lf = this.buf.subarray(0, this.len).indexOf(10, this.lineStart);
      if (lf < 0 || lf >= this.limit) break;
      const boundary = this.classify(this.lineStart, lf + 1);
      if (boundary !== null) return this.release(boundary.at, boundary.blank);
      this.lineStart = lf + 1;
    }
    if (this.len > this.limit) {
      // too big (header_size_limit): the header section ends at the last whole line within the
      // limit, as Postfix's does, and the rest is body; the edits apply to what is kept, so a
      // forged field cannot hide behind a megabyte of others
      const cut = this.lineStart > 0 ? this.lineStart : this.limit;
      return this.release(cut, false, true);
    }
    return [];
  }

  /** End of the message: whatever is still held, edited. */
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

  /** The header section is [0, at): apply the edits and let everything go. */
  private release(at: number, blank: boolean, truncated = false): Buffer[] {
    this.passing = true;
    const held = this.take();
    const rest = held.subarray(at);
    let fields = fieldSpans(held, at).map(([start, stop]) => held.subarray(start, stop));
    let summary: HeaderSummary | undefined;
    // summarised as it will be written, less what `add` puts in
    const summarised = () => summary ??= {
      ...summarise(Buffer.concat(fields)), hasSeparator: blank, endsWithNewline: endsWithLf([...fields, rest]), truncated,
    };
    for (const edit of this.edits) {
      if ('drop' in edit) {
        fields = fields.filter((f) => !this.drops(f, edit.drop));
        summary = undefined;
      } else this.added.push(...edit.add(summarised()));
    }
    this.summary = summarised();
    const out = [...fields];
    if (this.added.length || truncated) {
      const header = Buffer.concat(fields);
      // CRLF, as in the queue, unless the message's own lines end in a bare LF
      const firstLf = header.indexOf(10);
      const eol = firstLf > 0 && header[firstLf - 1] !== 13 ? '\n' : '\r\n';
      const needsEol = header.length > 0 && header[header.length - 1] !== 10;
      // a body that starts without the empty line gets one, so it is not read as part of our header
      // and so does the rest of a header section cut at the limit: it is body from here on
      const separator = !blank && (rest.length || truncated) ? eol : '';
      if (separator) this.summary.hasSeparator = true;
      out.push(Buffer.from((needsEol ? eol : '') + this.added.map((h) => h + eol).join('') + separator, 'utf8'));
    }
    out.push(rest);
    const written = out.filter((b) => b.length);
    const last = written[written.length - 1];
    if (last) this.lastByte = last[last.length - 1];
    this.summary.endsWithNewline = this.lastByte < 0 || this.lastByte === 10;
    return written;
  }

  /** Does the predicate name this field? Dropped fields are noted for the log. */
  private drops(field: Buffer, drop: FieldPredicate): boolean {
    const text = field.toString('utf8');
    const m = FIELD_RE.exec(text);
    if (!m) return false;
    const value = text.slice(m[0].length).replace(/\r?\n(?=[ \t])/g, '').replace(/\r?\n$/, '').trim();
    if (!drop(m[1].toLowerCase(), value)) return false;
    this.removed.push(`${m[1]}: ${value}`);
    return true;
  }
}

/** The last of these bytes is a line feed, or there are none. */
function endsWithLf(bufs: Buffer[]): boolean {
  const last = bufs.filter((b) => b.length).pop();
  return !last || last[last.length - 1] === 10;
}

/** [start, stop) of each field (with its continuation lines and line ending) within buf[0, end). */
function fieldSpans(buf: Buffer, end: number): [number, number][] {
  const spans: [number, number][] = [];
  let pos = 0;
  while (pos < end) {
    let lf = buf.indexOf(10, pos);
    let stop = lf < 0 || lf >= end ? end : lf + 1;
    const start = pos;
    // continuation lines belong to the field above
    while (stop < end && (buf[stop] === 0x20 || buf[stop] === 0x09)) {
      lf = buf.indexOf(10, stop);
      stop = lf < 0 || lf >= end ? end : lf + 1;
    }
    spans.push([start, stop]);
    pos = stop;
  }
  return spans;
}

/** Names present, From: values, the Message-ID, from a complete header section. */
export function summarise(header: Buffer): HeaderSummary {
  const names = new Set<string>();
  const from: string[] = [];
  let messageId: string | undefined;
  let received = 0;
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
    if (name === 'received') received++;
    if (name === 'from') from.push(value);
    else if (name === 'message-id' && messageId === undefined) messageId = value;
  }
  return { names, from, messageId, truncated: false, received, hasSeparator: false, endsWithNewline: true };
}
