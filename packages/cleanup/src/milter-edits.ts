/**
 * smtpd's milters changed the message (docs/milter.md, "How Postern applies
 * milter actions"): cleanup writes it again, under the same queue id, with
 * the new envelope (sender, recipients added or deleted, aliases expanded
 * again) and the header edits applied to the client's header section; the
 * body is the one received, or the milter's replacement streamed from a
 * scratch file. The original is read back as a stream, never held whole.
 */
import * as fsp from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import {
  AliasMaps, Envelope, Logger, MainConfig, MilterEditsRequest, QueueFileWriter, Recipient, Spool, applyHeaderEdits, HeaderField, MilterEdit,
} from '@postern/common';
import { expandRecipients } from './aliases.js';

/** A replacement body, written as it comes, beside the queue file (a dot name: never picked up). */
export class ScratchBody {
  private fh: fsp.FileHandle | null = null;
  private length = 0;
  constructor(readonly path: string) {}

  /** A new replacement (a later milter's replaces an earlier one's). */
  async start(): Promise<void> {
    if (!this.fh) this.fh = await fsp.open(this.path, 'wx', 0o600);
    else await this.fh.truncate(0);
    this.length = 0;
  }

  async write(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      const { bytesWritten } = await this.fh!.write(chunk, off, chunk.length - off, this.length);
      off += bytesWritten;
      this.length += bytesWritten;
    }
  }

  async remove(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close().catch(() => undefined);
    await fsp.unlink(this.path).catch(() => undefined);
  }
}

function toEdits(req: MilterEditsRequest | null): MilterEdit[] {
  return (req?.headers ?? []).map((h): MilterEdit => (h.op === 'add' ? { type: 'add-header', name: h.name, value: h.value }
    : h.op === 'insert' ? { type: 'insert-header', index: h.index ?? 0, name: h.name, value: h.value }
      : { type: 'change-header', index: h.index ?? 1, name: h.name, value: h.value }));
}

function parseFields(section: string): HeaderField[] {
  const out: HeaderField[] = [];
  for (const line of section.split('\r\n')) {
    if (!line) continue;
    if (/^[ \t]/.test(line) && out.length) out[out.length - 1].value += `\r\n${line}`;
    else {
      const c = line.indexOf(':');
      out.push(c > 0 ? { name: line.slice(0, c), value: line.slice(c + 1) } : { name: line, value: '' });
    }
  }
  return out;
}

const serialize = (fields: HeaderField[]) => Buffer.from(fields.map((f) => `${f.name}:${f.value}\r\n`).join(''), 'latin1');

export interface Rewritten { file: QueueFileWriter; env: Envelope; added: string[]; deleted: string[] }

/**
 * The rewritten queue file (not committed), or null when the milters deleted
 * every recipient. `given` are the recipients as the client gave them
 * (before alias expansion); `receivedLength` is our Received: header, which
 * the milters never saw and no edit touches.
 */
export async function rewriteForMilters(o: {
  spool: Spool; old: QueueFileWriter; env: Envelope; given: Recipient[]; receivedLength: number;
  edits: MilterEditsRequest | null; body: ScratchBody | null; config: MainConfig; log: Logger;
}): Promise<Rewritten | null> {
  const { edits } = o;
  const lower = (a: string) => a.toLowerCase();
  const deleted = new Set((edits?.delete_recipients ?? []).map(lower));
  const given: Recipient[] = o.given.filter((r) => !deleted.has(lower(r.address)));
  const have = new Set(given.map((r) => lower(r.address)));
  const added: string[] = [];
  for (const a of edits?.add_recipients ?? []) if (!have.has(lower(a))) { have.add(lower(a)); given.push({ address: a }); added.push(a); }
  if (!given.length) return null;
  const expanded = await expandRecipients(given, new AliasMaps(o.config), o.log, o.env.id);
  const env: Envelope = { ...o.env, sender: edits?.sender ?? o.env.sender, recipients: expanded.recipients };
  await o.old.moveAside();
  const file = await QueueFileWriter.create(o.spool, env);
  try {
    file.addStatus(expanded.statuses);
    // the header section is held (as cleanup holds it anyway); beyond this it is body
    const cap = o.config.int('header_size_limit') + 64 * 1024;
    let pos = 0; // bytes of the original consumed
    let head: Buffer[] = [];
    let headLength = 0;
    let state: 'received' | 'header' | 'body' = 'received';
    const headerEdits = toEdits(edits);
    const flushHeader = async (all: Buffer, end: number, blank: number) => {
      await file.write(serialize(applyHeaderEdits(parseFields(all.subarray(0, end).toString('latin1')), headerEdits)));
      await file.write(Buffer.from('\r\n'));
      state = 'body';
      const rest = all.subarray(end + blank);
      if (!o.body && rest.length) await file.write(rest);
    };
    for await (const c of o.old.openMessage() as AsyncIterable<Buffer>) {
      let chunk = c;
      if (state === 'received') {
        const take = Math.min(chunk.length, o.receivedLength - pos);
        if (take > 0) await file.write(chunk.subarray(0, take));
        pos += take;
        chunk = chunk.subarray(take);
        if (pos < o.receivedLength) continue;
        state = 'header';
      }
      if (state === 'header') {
        head.push(chunk);
        headLength += chunk.length;
        const all = Buffer.concat(head);
        if (all.subarray(0, 2).toString() === '\r\n') { await flushHeader(all, 0, 2); head = []; continue; }
        const end = all.indexOf('\r\n\r\n');
        if (end >= 0) { await flushHeader(all, end + 2, 2); head = []; continue; }
        if (headLength > cap) { await flushHeader(all, all.length, 0); head = []; continue; }
        head = [all];
        continue;
      }
      if (!o.body) await file.write(chunk);
    }
    if (state === 'header') await flushHeader(Buffer.concat(head), headLength, 0);
    if (o.body) {
      for await (const c of createReadStream(o.body.path, { highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>) await file.write(c);
    }
    await o.old.abort();
    return { file, env, added, deleted: [...deleted] };
  } catch (e) {
    await file.abort();
    throw e;
  }
}
