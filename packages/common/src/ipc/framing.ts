/**
 * The wire between services: frames on a Unix stream socket.
 *
 *   frame = type (1 byte) + payload length (uint32 BE) + payload
 *   'J' a JSON object (request header or reply)
 *   'D' raw message bytes     'E' end of message bytes     'A' abort
 *
 * Message content travels as D frames, never JSON-encoded, and is read with
 * the socket's own backpressure.
 */
import * as net from 'node:net';

export type Frame =
  | { type: 'J'; json: any }
  | { type: 'D'; data: Buffer }
  | { type: 'E' }
  | { type: 'A' };

/** Largest payloads a reader takes: a bigger frame is an error for that connection only. */
export interface FrameLimits { json?: number; data?: number }
export const MAX_JSON = 16 * 1024 * 1024;
export const MAX_DATA = 4 * 1024 * 1024;

export class FrameError extends Error {}

/**
 * The first whole frame in `buf` and the bytes after it, or null when more
 * bytes are needed. Throws FrameError for a frame over its limit or of an
 * unknown type, or JSON that does not parse. One parser for every reader.
 */
export function parseFrame(buf: Buffer, limits: FrameLimits = {}): { frame: Frame; rest: Buffer } | null {
  if (buf.length < 5) return null;
  const type = String.fromCharCode(buf[0]);
  const len = buf.readUInt32BE(1);
  if (len > (type === 'J' ? limits.json ?? MAX_JSON : limits.data ?? MAX_DATA)) throw new FrameError(`frame of ${len} bytes is too large`);
  if (buf.length < 5 + len) return null;
  const payload = buf.subarray(5, 5 + len);
  const rest = buf.subarray(5 + len);
  switch (type) {
    case 'J': {
      let json: unknown;
      try { json = JSON.parse(payload.toString('utf8')); } catch { throw new FrameError('JSON frame does not parse'); }
      return { frame: { type, json }, rest };
    }
    case 'D': return { frame: { type, data: payload }, rest };
    case 'E': return { frame: { type }, rest };
    case 'A': return { frame: { type }, rest };
    default: throw new FrameError(`unknown frame type ${JSON.stringify(type)}`);
  }
}

export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  private iter: AsyncIterator<Buffer>;

  constructor(socket: net.Socket, private readonly limits: FrameLimits = {}) {
    this.iter = (socket as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buf.length < n) {
      const r = await this.iter.next();
      if (r.done) return false;
      this.buf = this.buf.length ? Buffer.concat([this.buf, r.value]) : r.value;
    }
    return true;
  }

  /** The next frame, or null at a clean end of stream. */
  async next(): Promise<Frame | null> {
    if (!(await this.fill(5))) {
      if (this.buf.length) throw new FrameError('connection closed inside a frame');
      return null;
    }
    for (;;) {
      const parsed = parseFrame(this.buf, this.limits);
      if (parsed) { this.buf = parsed.rest; return parsed.frame; }
      if (!(await this.fill(5 + this.buf.readUInt32BE(1)))) throw new FrameError('connection closed inside a frame');
    }
  }

  /** Read a frame that must be JSON. */
  async json(): Promise<any> {
    return jsonOf(await this.next());
  }
}

/** The payload of a frame that must be a JSON reply (a read begun earlier, or FrameReader.json's). */
export function jsonOf(f: Frame | null): any {
  if (!f) throw new Error('connection closed before a reply');
  if (f.type !== 'J') throw new Error(`expected a JSON frame, got ${f.type}`);
  return f.json;
}

/** A frame's 5-byte header: the type letter and the payload length. */
function frameHead(type: string, length: number): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(length, 1);
  return head;
}

export class FrameWriter {
  constructor(private socket: net.Socket) {}

  private frame(type: string, payload: Buffer): Promise<void> {
    const head = frameHead(type, payload.length);
    return this.raw(payload.length ? Buffer.concat([head, payload]) : head);
  }

  json(obj: unknown): Promise<void> { return this.frame('J', Buffer.from(JSON.stringify(obj))); }

  /**
   * Several frames in one socket write (one system call, one wake-up of the reader):
   * qmgr's request to local with a small message is J, D and E at once.
   */
  async batch(frames: { type: 'J' | 'D' | 'E'; payload: Buffer }[]): Promise<void> {
    const parts: Buffer[] = [];
    const put = (type: string, payload: Buffer) => { parts.push(frameHead(type, payload.length), payload); };
    for (const f of frames) {
      // only message bytes are cut to MAX_DATA, as data() does
      if (f.type !== 'D') put(f.type, f.payload);
      else for (let off = 0; off < f.payload.length; off += MAX_DATA) put('D', f.payload.subarray(off, off + MAX_DATA));
    }
    await this.raw(Buffer.concat(parts));
  }

  private raw(buf: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      const ok = this.socket.write(buf, (err) => err && reject(err));
      if (ok) resolve();
      else {
        // backpressure: resume when the socket drains, fail if it closes first
        const onClose = () => reject(new Error('connection closed while writing'));
        this.socket.once('close', onClose);
        this.socket.once('drain', () => { this.socket.off('close', onClose); resolve(); });
      }
    });
  }
  async data(chunk: Buffer): Promise<void> {
    for (let off = 0; off < chunk.length; off += MAX_DATA) await this.frame('D', chunk.subarray(off, off + MAX_DATA));
  }
  end(): Promise<void> { return this.frame('E', Buffer.alloc(0)); }
  abort(): Promise<void> { return this.frame('A', Buffer.alloc(0)); }
}

export function connectUnix(socketPath: string, timeoutMs = 10000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`connect to ${socketPath}: timed out`)); }, timeoutMs);
    s.once('connect', () => { clearTimeout(timer); resolve(s); });
    s.once('error', (e) => { clearTimeout(timer); reject(new Error(`connect to ${socketPath}: ${e.message}`)); });
  });
}
