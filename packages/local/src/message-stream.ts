/**
 * What one delivery writes (`DeliveryInput`: the added header lines, then the
 * message as the queue holds it) and how it reaches a mailbox file:
 * `streamMessage` reads the message chunk by chunk through the line transforms
 * (line-endings.ts) into a writer, awaiting each write before reading on, so a
 * big message is never held whole in memory and a slow disk applies
 * backpressure to the reader. Opens no file itself: the writer is the caller's.
 */
import { LF, type LineTransform } from './line-endings.js';

export interface DeliveryInput {
  /** Lines to put before the message, already CRLF-terminated, e.g. "Return-Path: <a@b>\r\nDelivered-To: u@d\r\n" */
  prefix: Buffer;
  /** Factory for a fresh readable stream of the message bytes (CRLF line endings as stored in the queue). */
  open(): NodeJS.ReadableStream;
  /** Envelope sender ('' for null sender), used for mbox's From_ line. */
  sender: string;
  arrival: Date;
  /** Owner for created files/dirs, applied with fchown when running as root (otherwise skipped). */
  uid: number | null;
  gid: number | null;
}

export interface StreamStats {
  /** bytes written */
  size: number;
  /** LF bytes written */
  lines: number;
  /** last byte written, or -1 if nothing */
  lastByte: number;
}

export const emptyStats = (): StreamStats => ({ size: 0, lines: 0, lastByte: -1 });

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), 'utf8');
}

/**
 * Streams prefix + message through the given transforms into `write`, one chunk at a
 * time (each write is awaited before the next chunk is read: backpressure, bounded memory).
 */
export async function streamMessage(
  write: (b: Buffer) => Promise<void>,
  input: DeliveryInput,
  transforms: LineTransform[],
  stats: StreamStats,
): Promise<void> {
  const emit = async (buf: Buffer): Promise<void> => {
    let b = buf;
    for (const t of transforms) {
      if (b.length === 0) return;
      b = t.push(b);
    }
    await put(b);
  };
  const put = async (b: Buffer): Promise<void> => {
    if (b.length === 0) return;
    await write(b);
    stats.size += b.length;
    let p = -1;
    while ((p = b.indexOf(LF, p + 1)) !== -1) stats.lines++;
    stats.lastByte = b[b.length - 1]!;
  };
  await emit(input.prefix);
  const stream = input.open() as unknown as AsyncIterable<unknown>;
  for await (const chunk of stream) {
    await emit(toBuffer(chunk));
  }
  // Flush the transforms in order: what one releases at the end goes through the rest.
  for (let k = 0; k < transforms.length; k++) {
    let b = transforms[k]!.end();
    for (let j = k + 1; j < transforms.length && b.length > 0; j++) b = transforms[j]!.push(b);
    await put(b);
  }
}
