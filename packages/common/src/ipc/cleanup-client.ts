/**
 * The one client of cleanup (Postfix's post_mail.c): smtpd, pickup and qmgr's
 * notifications all submit a message the same way. A J frame with the
 * envelope, the message bytes as D frames written with the socket's
 * backpressure, optionally smtpd's after-body J frame, then E (or A to throw
 * it away), and cleanup's one reply once the file is on stable storage.
 */
import * as net from 'node:net';
import { connectUnix, FrameReader, FrameWriter } from './framing.js';
import type { AfterBodyRequest, CleanupReply, LocalEnvelope, SmtpdEnvelope } from './protocol.js';
import type { MilterEditsRequest } from './schema.js';

/** cleanup's socket could not be reached: nothing was sent (pickup waits, smtpd answers 451). */
export class CleanupUnreachable extends Error {}

export interface CleanupClientOptions {
  /** For the connect (default 10 s). */
  connectTimeoutMs?: number;
  /** The connection is given up when nothing moves on it this long (default: never). */
  idleTimeoutMs?: number;
}

/** One message on its way into the queue; one connection, closed by close(). */
export class CleanupSubmission {
  private readonly writer: FrameWriter;
  private readonly reader: FrameReader;

  private constructor(private readonly socket: net.Socket, readonly socketPath: string) {
    this.writer = new FrameWriter(socket);
    this.reader = new FrameReader(socket);
  }

  /** Connect to cleanup's socket; throws CleanupUnreachable when it cannot. */
  static async open(socketPath: string, opts: CleanupClientOptions = {}): Promise<CleanupSubmission> {
    let socket: net.Socket;
    try {
      socket = await connectUnix(socketPath, opts.connectTimeoutMs ?? 10000);
    } catch (e) {
      throw new CleanupUnreachable((e as Error).message);
    }
    socket.on('error', () => undefined);
    const ms = opts.idleTimeoutMs;
    if (ms) socket.setTimeout(ms, () => socket.destroy(new Error(`${socketPath}: no reply within ${ms} ms`)));
    return new CleanupSubmission(socket, socketPath);
  }

  /** The envelope: smtpd's on private/cleanup, a local client's on private/cleanup.local. */
  envelope(envelope: SmtpdEnvelope | LocalEnvelope): Promise<void> {
    return this.writer.json({ type: 'message', envelope });
  }

  /**
   * smtpd with milters: the envelope, and the queue id cleanup gives the message,
   * read at once (milters get it as the `i` macro before the body). Throws with
   * cleanup's error when it refuses the envelope.
   */
  async envelopeForId(envelope: SmtpdEnvelope): Promise<string> {
    await this.writer.json({ type: 'message', envelope, want_id: true });
    const r = await this.reader.json() as { type?: string; queue_id?: string; error?: string };
    if (r?.type !== 'queue-id' || typeof r.queue_id !== 'string') throw new Error(`cleanup refused the envelope: ${r?.error ?? 'no queue id'}`);
    return r.queue_id;
  }

  /**
   * Milter modifications (smtpd, after the body and any after-body frame):
   * replaceBody() starts a replacement body (the D frames that follow, from
   * data()), edits() the envelope and header changes; then finish().
   */
  replaceBody(): Promise<void> { return this.writer.json({ type: 'milter-body' }); }
  edits(edits: Omit<MilterEditsRequest, 'type'>): Promise<void> { return this.writer.json({ type: 'milter', ...edits }); }

  /** Message bytes, in order, as many calls as needed. */
  data(chunk: Buffer): Promise<void> { return this.writer.data(chunk); }

  /** smtpd's verdicts on the whole message, after the last bytes. */
  afterBody(after: Omit<AfterBodyRequest, 'type'>): Promise<void> {
    return this.writer.json({ type: 'after-body', ...after });
  }

  /** Throw away what was sent: cleanup queues nothing. */
  abort(): Promise<void> { return this.writer.abort(); }

  /** End of the message; resolves to cleanup's reply. */
  async finish(): Promise<CleanupReply> {
    await this.writer.end();
    return await this.reader.json() as CleanupReply;
  }

  close(): void { this.socket.destroy(); }
}

/**
 * Submit a whole message from a local client (pickup, qmgr's notifications)
 * and return cleanup's reply; throws CleanupUnreachable, or on a broken
 * connection. The chunks are read as they are sent, never all at once.
 */
export async function submitMessage(socketPath: string, envelope: LocalEnvelope,
  chunks: Iterable<Buffer> | AsyncIterable<Buffer>, opts: CleanupClientOptions = {}): Promise<CleanupReply> {
  const sub = await CleanupSubmission.open(socketPath, opts);
  try {
    await sub.envelope(envelope);
    for await (const chunk of chunks) await sub.data(chunk);
    return await sub.finish();
  } finally {
    sub.close();
  }
}
