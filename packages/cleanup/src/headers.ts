/**
 * Header fields cleanup removes from mail as it streams in. The header section
 * is held back (at most HEADER_SCAN_LIMIT bytes) until its end is seen, the
 * fields the predicate names are dropped, and everything else passes through
 * byte for byte, line endings included; the body is never held.
 *
 * Used for RFC 8601 section 5: an `Authentication-Results:` field that claims
 * our own authserv-id can only be a forgery (ours is added after this, by
 * smtpd's verdict), so a MUA that trusts our results must never see one that
 * came from outside.
 */
import { HEADER_SCAN_LIMIT } from './header-fixup.js';

/** Says whether to drop a field, given its lower-case name and its unfolded value. */
export type FieldPredicate = (name: string, value: string) => boolean;

const FIELD_RE = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:/;

export class HeaderFieldFilter {
  private buf = Buffer.alloc(16 * 1024);
  private len = 0;
  /** Start of the first line not yet classified. */
  private lineStart = 0;
  private sawField = false;
  private passing = false;
  /** The fields dropped, unfolded, for the log. */
  removed: string[] = [];

  constructor(private readonly drop: FieldPredicate, private readonly limit = HEADER_SCAN_LIMIT) {}

  /** Message bytes in; bytes to write out (nothing while the header section is held back). */
  push(chunk: Buffer): Buffer[] {
    if (this.passing) return [chunk];
    this.hold(chunk);
    for (;;) {
      const lf = this.buf.subarray(0, this.len).indexOf(10, this.lineStart);
      if (lf < 0) break;
      if (this.endsHeader(this.lineStart, lf)) return this.release(this.lineStart);
      this.lineStart = lf + 1;
    }
    if (this.len > this.limit) { this.passing = true; return [this.take()]; } // too big to examine: as it came
    return [];
  }

  /** End of the message: whatever is still held (a message that is all header). */
  end(): Buffer[] {
    if (this.passing) return [];
    return this.release(this.len);
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

  /** Is the line [start, lf) the empty line, or not a header line: the end of the header section? */
  private endsHeader(start: number, lf: number): boolean {
    const line = this.buf.toString('latin1', start, lf).replace(/\r$/, '');
    if (line === '') return true;
    if (/^[ \t]/.test(line) && this.sawField) return false; // folded continuation
    if (!FIELD_RE.test(line)) return true;
    this.sawField = true;
    return false;
  }

  /** Drop the named fields from the held header section [0, end) and let everything go. */
  private release(end: number): Buffer[] {
    this.passing = true;
    const buf = this.take();
    const kept: Buffer[] = [];
    for (const [start, stop] of fieldSpans(buf, end)) {
      const field = buf.toString('utf8', start, stop);
      const m = FIELD_RE.exec(field);
      const value = m ? field.slice(m[0].length).replace(/\r?\n(?=[ \t])/g, '').replace(/\r?\n$/, '').trim() : '';
      if (m && this.drop(m[1].toLowerCase(), value)) this.removed.push(`${m[1]}: ${value}`);
      else kept.push(buf.subarray(start, stop));
    }
    kept.push(buf.subarray(end));
    return kept.filter((b) => b.length);
  }
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

/**
 * The authserv-id of an Authentication-Results value (RFC 8601 2.2): the
 * first token or quoted string, after any comments.
 */
export function authservId(value: string): string {
  let v = value.trimStart();
  while (v.startsWith('(')) {
    let depth = 0;
    let i = 0;
    for (; i < v.length; i++) {
      if (v[i] === '\\') { i++; continue; }
      if (v[i] === '(') depth++;
      else if (v[i] === ')' && --depth === 0) break;
    }
    v = v.slice(i + 1).trimStart();
  }
  const quoted = /^"((?:[^"\\]|\\.)*)"/.exec(v);
  if (quoted) return quoted[1].replace(/\\(.)/g, '$1');
  return /^[^\s;()]*/.exec(v)![0];
}

/** Drops Authentication-Results: fields whose authserv-id is our host name (compared case-blind, trailing dot ignored). */
export function forgedAuthResults(hostname: string): FieldPredicate {
  const ours = hostname.toLowerCase().replace(/\.$/, '');
  return (name, value) => name === 'authentication-results' && authservId(value).toLowerCase().replace(/\.$/, '') === ours;
}
