/**
 * Bare CR and bare LF in DATA (SMTP smuggling, CVE-2023-51764).
 *
 * smtp-server ends DATA only on CRLF.CRLF but passes lone CR and LF through,
 * and a downstream server that treats `\n.\n` as the end would see a second,
 * smuggled message. From an untrusted client any lone CR or LF rejects the
 * message; from mynetworks they are rewritten to CRLF.
 */
const CR = 13;
const LF = 10;

export class LineEndingCheck {
  rejected = false;
  private pendingCR = false;

  constructor(private readonly normalise: boolean) {}

  /** Returns the bytes to store (normalised when trusted); sets `rejected` on a violation. */
  push(chunk: Buffer): Buffer {
    if (this.rejected || !chunk.length) return Buffer.alloc(0);
    let fixes: number[] | null = null; // positions needing a CRLF instead of a lone CR or LF
    let start = 0;
    let heldCR = false;
    if (this.pendingCR) {
      this.pendingCR = false;
      if (chunk.length && chunk[0] === LF) { start = 1; heldCR = true; }
      else if (!this.bad()) return Buffer.alloc(0);
      else (fixes ??= []).push(-1); // the CR that ended the previous chunk was lone
    }
    for (let i = start; i < chunk.length; i++) {
      const b = chunk[i];
      if (b !== CR && b !== LF) continue;
      if (b === CR) {
        if (i + 1 === chunk.length) { this.pendingCR = true; break; }
        if (chunk[i + 1] === LF) { i++; continue; }
      }
      if (!this.bad()) return Buffer.alloc(0);
      (fixes ??= []).push(i);
    }
    let out = chunk;
    if (fixes) out = rewrite(chunk, fixes);
    if (heldCR) out = Buffer.concat([Buffer.from('\r'), out]);
    // hold back a trailing CR until we know what follows it
    return this.pendingCR ? out.subarray(0, out.length - 1) : out;
  }

  /** End of data: a CR left waiting is lone. */
  end(): Buffer {
    if (!this.pendingCR || this.rejected) return Buffer.alloc(0);
    this.pendingCR = false;
    return this.bad() ? Buffer.from('\r\n') : Buffer.alloc(0);
  }

  private bad(): boolean {
    if (!this.normalise) this.rejected = true;
    return this.normalise;
  }
}

function rewrite(chunk: Buffer, fixes: number[]): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (const pos of fixes) {
    if (pos === -1) { parts.push(Buffer.from('\r\n')); continue; }
    parts.push(chunk.subarray(from, pos), Buffer.from('\r\n'));
    from = pos + 1;
  }
  parts.push(chunk.subarray(from));
  return Buffer.concat(parts);
}
