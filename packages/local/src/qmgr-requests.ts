/**
 * qmgr's delivery requests on `private/local.qmgr` (Postfix's virtual(8): the
 * queue manager hands the mailbox writer its message directly, no LMTP client
 * in between). A J frame with the envelope (localDeliveryRequest), the message
 * as D frames, E; the reply is one DeliveryResult per recipient, each given
 * only after that recipient's mailbox write was fsynced (delivery.ts). local
 * still never opens the queue: the one message it must write comes over the
 * socket, as LMTP's DATA brought it, without the dot-stuffing and line parsing.
 * Logs one delivery line per recipient (queue_id, to, relay, delay, dsn,
 * status, and for a written mailbox its path and size), as Postfix's virtual(8).
 */
import { Readable } from 'node:stream';
import {
  serveFrames, FrameServer, FrameReader, FrameConnection, validate, localDeliveryRequest, refuseInvalid, SchemaError,
  LocalDeliveryRequest, DeliveryResult, DeliveryReply, delaySince, UserDb, UserInfo, Logger,
} from '@postern/common';
import { deliverToRecipient, MailboxDelivery } from './delivery.js';
import type { MessageCopies, MessageCopy } from './message-copy.js';
import { findUser } from './recipients.js';

/**
 * The message bytes of one request, read from the connection frame by frame.
 * One reader at a time (the mailbox writer, then drain()), so a frame is never
 * taken by two; E ends it, a closed connection or an A frame fails it.
 */
export class FramedBody {
  ended = false;
  private failed: Error | null = null;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly reader: FrameReader) {}

  /** The next chunk, or null once E has come. */
  next(): Promise<Buffer | null> {
    const p = this.chain.then(async (): Promise<Buffer | null> => {
      if (this.ended) return null;
      if (this.failed) throw this.failed;
      let f;
      try { f = await this.reader.next(); } catch (e) { throw (this.failed = e as Error); }
      if (f?.type === 'D') return f.data;
      if (f?.type === 'E') { this.ended = true; return null; }
      throw (this.failed = new Error(!f ? 'connection closed inside the message'
        : f.type === 'A' ? 'qmgr aborted the message' : `unexpected ${f.type} frame inside the message`));
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** The message as a stream; it errors (no mailbox keeps a truncated message) unless E ends it. */
  stream(): Readable {
    const self = this;
    return Readable.from((async function* () {
      for (;;) {
        const c = await self.next();
        if (!c) return;
        yield c;
      }
    })(), { objectMode: false });
  }

  /** Reads what no mailbox writer read, up to E: the next request starts after it. */
  async drain(): Promise<void> {
    while (!this.ended) await this.next();
  }
}

export interface QmgrServerOptions {
  log: Logger;
  /** The user table now (a reload replaces it). */
  users(): UserDb;
  copies: MessageCopies;
  lockTimeoutMs(): number;
  /** What the delivery lines name as relay. */
  relay: string;
}

/** A recipient's answer as qmgr records it: the same text an LMTP client would have logged. */
function resultOf(index: number, outcome: MailboxDelivery | Error, relay: string): DeliveryResult {
  if (!(outcome instanceof Error)) return { index, status: 'sent', dsn: outcome.reply.split(' ')[0]!, reason: `250 ${outcome.reply}`, relay };
  const e = outcome as Error & { responseCode?: number; enhanced?: string };
  const code = e.responseCode ?? 451;
  const dsn = e.enhanced ?? (code >= 500 ? '5.0.0' : '4.3.0');
  const text = e.enhanced ? e.message : `${dsn} ${e.message}`;
  return { index, status: code >= 500 ? 'bounced' : 'deferred', dsn, reason: `${code} ${text}`.replace(/\s*[\r\n]+\s*/g, ' ').trim(), relay };
}

/** Delivers one request's recipients; the body is read by the mailbox writers (or not at all when nobody exists). */
async function deliver(req: LocalDeliveryRequest, body: FramedBody, o: QmgrServerOptions): Promise<DeliveryResult[]> {
  const outcomes = new Map<number, MailboxDelivery | Error>();
  const found: { index: number; address: string; entry: UserInfo }[] = [];
  const users = o.users();
  for (const r of req.recipients) {
    try { found.push({ ...r, entry: await findUser(users, r.address) }); } catch (e) { outcomes.set(r.index, e as Error); }
  }
  let open: () => NodeJS.ReadableStream = () => { throw new Error('no message'); };
  let copy: MessageCopy | null = null;
  try {
    if (found.length === 1) {
      let used = false;
      open = () => { if (used) throw new Error('message stream already read'); used = true; return body.stream(); };
    } else if (found.length > 1) {
      try {
        copy = await o.copies.copy(body.stream());
        open = copy.open;
      } catch (e) {
        o.log.warn({ queue_id: req.queue_id, dir: o.copies.dir, err: (e as Error).message }, 'cannot copy a message for several recipients');
        for (const r of found) outcomes.set(r.index, e as Error);
        found.length = 0;
      }
    }
    for (const r of found) {
      try {
        outcomes.set(r.index, await deliverToRecipient({
          rcpt: r.address, entry: r.entry, sender: req.sender, open, lockTimeoutMs: o.lockTimeoutMs(), log: o.log, queueId: req.queue_id,
        }));
      } catch (e) {
        outcomes.set(r.index, e as Error);
      }
    }
  } finally {
    if (copy) await copy.remove();
  }
  return req.recipients.map((r) => {
    const outcome = outcomes.get(r.index) ?? new Error('no result');
    const res = resultOf(r.index, outcome, o.relay);
    o.log.info({ queue_id: req.queue_id, to: `<${r.address}>`, relay: o.relay, delay: delaySince(req.arrival), dsn: res.dsn, status: res.status,
      ...(outcome instanceof Error ? {} : outcome.fields) }, `${res.status} (${res.reason})`);
    return res;
  });
}

/**
 * The server on local.qmgr: requests one after another on a kept connection.
 * A request that does not fit the schema is refused and the connection closed
 * (the message frames after it cannot be told from a next request).
 */
export function serveQmgrRequests(o: QmgrServerOptions): FrameServer {
  return serveFrames({
    async serve(conn: FrameConnection) {
      for (;;) {
        const f = await conn.next();
        if (!f) return;
        if (f.type !== 'J') {
          await conn.writer.json({ error: `expected a JSON frame, got ${f.type}` }).catch(() => undefined);
          return;
        }
        let req: LocalDeliveryRequest;
        try {
          req = validate(localDeliveryRequest, f.json);
        } catch (e) {
          if (e instanceof SchemaError) await refuseInvalid(conn, o.log, e, { socket: 'private/local.qmgr' });
          else await conn.writer.json({ error: (e as Error).message }).catch(() => undefined);
          return;
        }
        const body = new FramedBody(conn.reader);
        let reply: DeliveryReply;
        try {
          reply = { results: await deliver(req, body, o), dead: [] };
        } catch (e) {
          o.log.error({ queue_id: req.queue_id, err: (e as Error).message }, 'delivery request failed');
          reply = { error: (e as Error).message };
        }
        // a message that did not arrive whole leaves the connection out of step: it ends without a reply
        try { await body.drain(); } catch (e) {
          o.log.warn({ queue_id: req.queue_id, err: (e as Error).message }, 'delivery request broken off');
          return;
        }
        await conn.writer.json(reply);
      }
    },
  });
}
