/**
 * The line transforms between the queue's wire form and a mailbox, applied
 * chunk by chunk while the message streams (state is kept across chunk
 * boundaries, so nothing is held whole in memory):
 *  - `CrlfToLf`: CRLF -> LF, for both Maildir and mbox.
 *  - `MboxrdQuoter`: mboxrd's From_ quoting, for mbox only.
 * Pure byte transforms: no file, no I/O.
 *
 * Why LF: the queue stores the message with CRLF line endings (SMTP's wire
 * form). Both mailbox formats are stored with LF line endings, which is what local
 * mail readers (mutt, Dovecot's mbox and Maildir code, Python's `mailbox`, ...) expect:
 *  - Maildir: Dovecot accepts either, but other readers and tools (grep, formail,
 *    mutt's Maildir support) assume LF, and Dovecot's own LDA/LMTP writes LF. The
 *    `,S=` size in the file name is the exact byte count of the LF file as stored,
 *    and Dovecot's `,W=` the "virtual", CRLF size (stored size + number of LFs) so
 *    Dovecot can answer RFC822.SIZE without reading the file (maildir.ts).
 *  - mbox: the format is LF-only by definition.
 * A bare CR (not followed by LF) is kept as it is; the CR of a CRLF split across two
 * chunks is held back until the next chunk shows whether an LF follows.
 */

/** A streaming byte transform: `push` each chunk in order, then `end` once for what it held back. */
export interface LineTransform {
  push(chunk: Buffer): Buffer;
  end(): Buffer;
}

export const LF = 0x0a;
const CR = 0x0d;
const GT = 0x3e;

/** Streaming CRLF -> LF converter; state (a trailing CR) is kept across chunk boundaries. */
export class CrlfToLf implements LineTransform {
  private pendingCR = false;

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const out = Buffer.allocUnsafe(chunk.length + 1);
    let o = 0;
    let i = 0;
    if (this.pendingCR) {
      this.pendingCR = false;
      if (chunk[0] === LF) {
        out[o++] = LF;
        i = 1;
      } else {
        out[o++] = CR; // bare CR: keep it
      }
    }
    while (i < chunk.length) {
      const cr = chunk.indexOf(CR, i);
      if (cr === -1) {
        o += chunk.copy(out, o, i);
        break;
      }
      o += chunk.copy(out, o, i, cr);
      if (cr === chunk.length - 1) {
        this.pendingCR = true;
        break;
      }
      if (chunk[cr + 1] === LF) {
        out[o++] = LF;
        i = cr + 2;
      } else {
        out[o++] = CR;
        i = cr + 1;
      }
    }
    return out.subarray(0, o);
  }

  end(): Buffer {
    if (!this.pendingCR) return Buffer.alloc(0);
    this.pendingCR = false;
    return Buffer.from([CR]);
  }
}

const FROM_ = Buffer.from('From ', 'latin1');
const GT_FROM_ = Buffer.from('>From ', 'latin1');

/**
 * Streaming mboxrd quoting on LF text: a line matching /^>*From / gets one more '>'.
 * Adding the '>' right before "From " is the same as adding it at the start of the
 * line (the line's leading run of '>' is unchanged either way), so the '>' run can be
 * passed through as it arrives and only a partial "From " (at most 4 bytes) is
 * ever held back across chunks.
 */
export class MboxrdQuoter implements LineTransform {
  /** true while the current line so far is only '>' characters followed by `matched` bytes of "From ". */
  private candidate = true;
  private matched = 0;

  push(chunk: Buffer): Buffer {
    const parts: Buffer[] = [];
    let i = 0;
    let runStart = 0; // start of bytes to be copied through unchanged
    const n = chunk.length;
    while (i < n) {
      if (!this.candidate) {
        const lf = chunk.indexOf(LF, i);
        if (lf === -1) {
          i = n;
          break;
        }
        i = lf + 1;
        this.candidate = true;
        this.matched = 0;
        continue;
      }
      const b = chunk[i]!;
      if (this.matched === 0 && b === GT) {
        i++;
        continue;
      }
      if (b === FROM_[this.matched]) {
        // Hold the partial "From " back: flush what precedes it first.
        if (this.matched === 0) {
          if (i > runStart) parts.push(chunk.subarray(runStart, i));
        }
        this.matched++;
        i++;
        runStart = i;
        if (this.matched === FROM_.length) {
          parts.push(GT_FROM_);
          this.matched = 0;
          this.candidate = false;
        }
        continue;
      }
      // Mismatch: release the held-back partial "From " (if any) and go on.
      if (this.matched > 0) {
        parts.push(FROM_.subarray(0, this.matched));
        this.matched = 0;
        runStart = i;
      }
      if (b === LF) {
        i++; // empty or '>'-only line ends: the next line is a candidate again
      } else {
        this.candidate = false;
        i++;
      }
    }
    // A partial "From " held back at the end of the chunk is not copied: runStart already points past it.
    if (n > runStart) parts.push(chunk.subarray(runStart, n));
    if (parts.length === 1) return parts[0]!;
    return Buffer.concat(parts);
  }

  end(): Buffer {
    const held = this.matched > 0 ? Buffer.from(FROM_.subarray(0, this.matched)) : Buffer.alloc(0);
    this.matched = 0;
    this.candidate = true;
    return held;
  }
}
