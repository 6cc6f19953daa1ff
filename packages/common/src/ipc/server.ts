/**
 * One skeleton for every framed socket server (cleanup, qmgr, smtp/lmtp,
 * pickup, showq, anvil), as Postfix's multi_server.c is for its daemons:
 * accept, ignore a client's socket errors, keep count of the connections in
 * hand, and on stop close the listeners, drop the connections that wait for a
 * request (they hold no work) and wait for the ones that are working.
 */
import * as net from 'node:net';
import { Frame, FrameReader, FrameWriter, FrameLimits } from './framing.js';
import { SchemaError } from './schema.js';
import type { Logger } from '../util/log.js';

export interface FrameConnection {
  readonly socket: net.Socket;
  readonly reader: FrameReader;
  readonly writer: FrameWriter;
  /** Who can reach the socket it came in on, as master said (cleanup has two). */
  readonly clients?: string;
  /**
   * The next frame, or null at a clean end of stream or once the server stops.
   * While it waits the connection holds no work, so stop() closes it.
   */
  next(): Promise<Frame | null>;
}

export interface FrameServerOptions {
  /** Serve one connection; the socket is ended when this settles. */
  serve(conn: FrameConnection): Promise<void>;
  /** A connection idle this long is closed (a client that connects and sends nothing). */
  timeoutMs?: number;
  /** Frame size limits for what clients send (framing.ts's defaults otherwise). */
  limits?: FrameLimits;
}

export class FrameServer {
  private readonly servers: net.Server[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  /** Connections waiting for their next frame. */
  private readonly waiting = new Set<net.Socket>();
  private stopping = false;

  constructor(private readonly opts: FrameServerOptions) {}

  /** Serve a listening handle from master (may be called once per listener). */
  listen(handle: net.Server | object, info?: { clients?: string }): void {
    const server = net.createServer((socket) => this.accept(socket, info?.clients));
    server.listen(handle as any);
    this.servers.push(server);
  }

  /** Connections being served now. */
  get connections(): number { return this.inFlight.size; }

  private accept(socket: net.Socket, clients: string | undefined): void {
    // a client that resets its end is its own problem, never this process's
    socket.on('error', () => undefined);
    if (this.stopping) { socket.destroy(); return; }
    if (this.opts.timeoutMs) socket.setTimeout(this.opts.timeoutMs, () => socket.destroy());
    const reader = new FrameReader(socket, this.opts.limits);
    const conn: FrameConnection = {
      socket, reader, writer: new FrameWriter(socket), clients,
      next: async () => {
        if (this.stopping) return null;
        this.waiting.add(socket);
        try { return await reader.next(); } finally { this.waiting.delete(socket); }
      },
    };
    const p = this.opts.serve(conn).catch(() => undefined).finally(() => {
      socket.end();
      this.inFlight.delete(p);
    });
    this.inFlight.add(p);
  }

  /** Stop accepting; close idle connections; resolve when the work in hand is done. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const s of this.servers) s.close();
    for (const c of this.waiting) c.destroy();
    await Promise.allSettled([...this.inFlight]);
  }
}

export function serveFrames(opts: FrameServerOptions): FrameServer {
  return new FrameServer(opts);
}

/**
 * Refuse a request that does not fit its socket's schema: logged, answered
 * `{ok: false, error: "invalid request: PATH: PROBLEM"}`, nothing of it used.
 */
export async function refuseInvalid(conn: FrameConnection, log: Logger | undefined, e: SchemaError,
  fields: Record<string, unknown> = {}): Promise<void> {
  log?.warn({ ...fields, err: e.message }, 'request refused: not what this socket\'s clients may send');
  await conn.writer.json({ ok: false, error: `invalid request: ${e.message}` }).catch(() => undefined);
}

export interface RequestServerOptions<Req, Reply, State> {
  /**
   * The request as this socket accepts it. A SchemaError is refused as
   * invalid (refuseInvalid); any other error is answered with `failure`.
   */
  check(raw: unknown): Req;
  answer(req: Req, state: State, conn: FrameConnection): Reply | Promise<Reply>;
  /** The reply when a request cannot be answered. */
  failure(error: string): Reply;
  /** As many requests per connection as the client sends (kept connections), or one. */
  many?: boolean;
  /** Per-connection state (anvil's open connections); `close` runs when the connection ends. */
  open?(): State;
  close?(state: State): void;
  timeoutMs?: number;
  limits?: FrameLimits;
  log?: Logger;
  /** Added to the log line of a refused request (`socket`). */
  logFields?: Record<string, unknown>;
  /** A connection that broke (a bad frame, a reset): for a server that logs it. */
  broken?(e: Error): void;
}

/** A server of JSON requests, each answered by one JSON reply. */
export function serveRequests<Req, Reply, State = undefined>(opts: RequestServerOptions<Req, Reply, State>): FrameServer {
  return serveFrames({
    timeoutMs: opts.timeoutMs,
    limits: opts.limits,
    async serve(conn) {
      const state = opts.open ? opts.open() : (undefined as State);
      try {
        do {
          const f = await conn.next();
          if (!f) return;
          let req: Req;
          try {
            if (f.type !== 'J') throw new Error(`expected a JSON frame, got ${f.type}`);
            req = opts.check(f.json);
          } catch (e) {
            if (e instanceof SchemaError) await refuseInvalid(conn, opts.log, e, opts.logFields);
            else await conn.writer.json(opts.failure((e as Error).message));
            continue;
          }
          let reply: Reply;
          try { reply = await opts.answer(req, state, conn); } catch (e) { reply = opts.failure((e as Error).message); }
          await conn.writer.json(reply);
        } while (opts.many);
      } catch (e) {
        opts.broken?.(e as Error);
      } finally {
        opts.close?.(state);
      }
    },
  });
}
