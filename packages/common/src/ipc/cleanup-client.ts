/**
 * The one client of cleanup (Postfix's post_mail.c): smtpd, pickup and qmgr's
 * notifications all submit a message the same way. A J frame with the
 * envelope, the message bytes as D frames written with the socket's
 * backpressure, optionally smtpd's after-body J frame, then E (or A to throw
 * it away), and cleanup's one reply once the file is on stable storage.
 * cleanup then waits for the next envelope on the same connection: smtpd keeps
 * its connections (CleanupConnections) instead of opening one per message.
 */
import * as net from 'node:net';
import { connectUnix, Frame, FrameReader, FrameWriter, jsonOf } from './framing.js';
import { IdlePool } from './idle-pool.js';
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
  /** While kept idle: the read that notices cleanup closing the connection (any frame then is a protocol error). */
  private pending: Promise<Frame | null> | null = null;
  private idling = false;

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
    const r = await this.readJson() as { type?: string; queue_id?: string; error?: string };
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
    return await this.readJson() as CleanupReply;
  }

  /** The reply: from the read begun while the connection was kept idle, if there was one. */
  private async readJson(): Promise<any> {
    const pending = this.pending;
    this.pending = null;
    return jsonOf(await (pending ?? this.reader.next()));
  }

  /**
   * Between messages: a read stays pending, so cleanup closing the connection
   * (or sending something unasked) is seen at once and the socket closed, which
   * takes it out of the pool (the pool listens for its end).
   */
  idle(): void {
    this.socket.unref();
    this.idling = true;
    const pending = this.reader.next();
    this.pending = pending;
    // once taken again, what this read brings is the next reply (readJson)
    const gone = () => { if (this.idling) this.socket.destroy(); };
    pending.then(gone, gone);
  }

  /** Back in use after idle(). */
  resume(): void {
    this.idling = false;
    this.socket.ref();
  }

  get usable(): boolean { return !this.socket.destroyed && this.socket.writable; }

  close(): void { this.socket.destroy(); }

  // what IdlePool needs of a kept session
  once(_event: 'end', listener: () => void): void { this.socket.once('close', listener); }
  off(_event: 'end', listener: () => void): void { this.socket.off('close', listener); }
  quit(): void { this.close(); }
}

/**
 * smtpd's kept connections to cleanup: one is taken per message and given back
 * after an accepted one, so a busy listener does not connect and accept once per
 * message. A kept connection that cleanup closes (a restart, its stop) is
 * noticed while idle and dropped; one that dies in the instant it is taken
 * fails that message with a 4xx, as a cleanup dying mid-message does.
 */
export class CleanupConnections {
  private readonly pool = new IdlePool<CleanupSubmission>();

  constructor(private readonly socketPath: string, private readonly opts: CleanupClientOptions & { maxIdle?: number; keepMs?: number } = {}) {}

  /** A kept connection, or a new one (throws CleanupUnreachable). */
  async open(): Promise<CleanupSubmission> {
    for (let kept = this.pool.take(this.socketPath); kept; kept = this.pool.take(this.socketPath)) {
      if (kept.conn.usable) { kept.conn.resume(); return kept.conn; }
      kept.conn.close();
    }
    return CleanupSubmission.open(this.socketPath, this.opts);
  }

  /** After a message: keep the connection when cleanup answered and expects the next envelope, else close it. */
  release(sub: CleanupSubmission, reusable: boolean): void {
    if (!reusable || !sub.usable) { sub.close(); return; }
    sub.idle();
    this.pool.put(this.socketPath, sub, undefined, this.opts.keepMs ?? 60_000, this.opts.maxIdle ?? 32);
  }

  /** Close every kept connection (at stop). */
  closeAll(): void {
    for (let kept = this.pool.take(this.socketPath); kept; kept = this.pool.take(this.socketPath)) kept.conn.close();
  }
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
