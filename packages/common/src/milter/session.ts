/**
 * One milter connection (MilterSession): option negotiation, the events of an
 * SMTP session in order, and the replies, each awaited within its timeout.
 * Any failure (connect, timeout, a malformed or unexpected packet) rejects
 * with MilterError; the caller then applies the milter's default action.
 */
import * as net from 'node:net';
import {
  SMFIC, SMFIR, SMFIF_ALL, SMFIP, SMFIP_OFFERED, SMFIM, MILTER_CHUNK_SIZE, Packet, PacketDecoder,
  encodePacket, cstr, u32, splitStrings,
} from './protocol.js';
import type { MilterSpec } from './spec.js';

export class MilterError extends Error {}

/** Most modification requests taken from one milter for one message. */
export const MAX_EDITS = 10000;
/** Most packets held that arrived while no reply was awaited. */
const MAX_UNREAD = 1000;

export interface MilterTimeouts {
  /** Connect and option negotiation. */
  connectMs: number;
  /** Replies to connect, HELO, MAIL, RCPT, DATA, header, end of header. */
  commandMs: number;
  /** Replies to body chunks and end of message. */
  contentMs: number;
}

/** Macro names to send at each stage (Postfix's milter_*_macros). */
export interface MacroLists {
  connect: string[]; helo: string[]; mail: string[]; rcpt: string[]; data: string[]; eoh: string[]; eom: string[];
}
export type MacroStage = keyof MacroLists;
/** Looks a macro up by name (`j`, `{daemon_name}`); undefined: not sent. */
export type MacroSource = (name: string) => string | undefined;

/** An SMTP reply a milter gave (SMFIR_REPLYCODE), or none: then Postfix's own texts. */
export interface MilterReply { code: number; enhanced: string; text: string }

export type MilterVerdict =
  | { action: 'continue' }
  /** Accept: this milter is done (for the message, or the whole session at connect/HELO). */
  | { action: 'accept' }
  | { action: 'reject'; reply?: MilterReply }
  | { action: 'tempfail'; reply?: MilterReply }
  | { action: 'discard' };

/** A modification a milter asked for at the end of the message. */
export type MilterEdit =
  | { type: 'add-header'; name: string; value: string }
  | { type: 'insert-header'; index: number; name: string; value: string }
  /** value '' deletes the index'th (1-based) field of that name. */
  | { type: 'change-header'; index: number; name: string; value: string }
  | { type: 'add-rcpt'; address: string; args?: string }
  | { type: 'delete-rcpt'; address: string }
  | { type: 'change-from'; address: string; args?: string }
  | { type: 'quarantine'; reason: string };

const STAGE_BY_SMFIM: Record<number, MacroStage> = {
  [SMFIM.CONNECT]: 'connect', [SMFIM.HELO]: 'helo', [SMFIM.ENVFROM]: 'mail', [SMFIM.ENVRCPT]: 'rcpt',
  [SMFIM.DATA]: 'data', [SMFIM.EOM]: 'eom', [SMFIM.EOH]: 'eoh',
};
const MACRO_CMD: Record<MacroStage, string> = {
  connect: SMFIC.CONNECT, helo: SMFIC.HELO, mail: SMFIC.MAIL, rcpt: SMFIC.RCPT, data: SMFIC.DATA, eoh: SMFIC.EOH, eom: SMFIC.BODYEOB,
};

/** "550 5.7.1 text" (multi-line replies joined) as code, enhanced code and text; null when not a 4xx/5xx reply. */
export function parseReplyCode(text: string): MilterReply | null {
  const m = /^([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3})\s+)?([\s\S]*)$/.exec(text.trim());
  if (!m) return null;
  const lines = m[3].split(/\r?\n/).map((l) => l.replace(/^[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3}\s+)?/, ''));
  const code = Number(m[1]);
  return { code, enhanced: m[2] ?? (code >= 500 ? '5.7.1' : '4.7.1'), text: lines.join(' ').trim() };
}

export interface MilterSessionOptions {
  /** milter_protocol (6). */
  protocol: number;
  macros: MacroLists;
  /** Relative unix: paths are taken from here (Postfix: the queue directory). */
  baseDir?: string;
}

export class MilterSession {
  private readonly decoder = new PacketDecoder();
  private readonly queue: Packet[] = [];
  private waiter: ((p: Packet | Error) => void) | null = null;
  private failure: Error | null = null;
  /** What the milter asked for at negotiation. */
  actions = 0;
  flags = 0;
  version = 0;
  readonly macros: MacroLists;
  /** The milter answered SKIP to a body chunk: the rest of this message's body is not sent. */
  private skipBody = false;
  private closed = false;

  private constructor(readonly spec: MilterSpec, private readonly socket: net.Socket, private readonly timeouts: MilterTimeouts, macros: MacroLists) {
    this.macros = { ...macros };
    socket.on('data', (chunk: Buffer) => {
      let packets: Packet[];
      try { packets = this.decoder.push(chunk); } catch (e) { return this.fail(e as Error); }
      for (const p of packets) {
        if (this.waiter) { const w = this.waiter; this.waiter = null; w(p); } else if (this.queue.length >= MAX_UNREAD) {
          // packets nobody asked for, without end: a broken milter, not a queue that grows
          return this.fail(new MilterError(`more than ${MAX_UNREAD} packets sent without being asked`));
        } else this.queue.push(p);
      }
    });
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new MilterError('connection closed by milter')));
  }

  get name(): string { return this.spec.name; }

  private fail(e: Error): void {
    if (!this.failure) this.failure = e instanceof MilterError ? e : new MilterError(e.message);
    if (this.waiter) { const w = this.waiter; this.waiter = null; w(this.failure); }
  }

  /** Connect and negotiate options; rejects with MilterError within the connect timeout. */
  static async connect(spec: MilterSpec, timeouts: MilterTimeouts, opts: MilterSessionOptions): Promise<MilterSession> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const a = spec.address;
      const path = a.kind === 'unix' && !a.path.startsWith('/') && opts.baseDir ? `${opts.baseDir}/${a.path}` : (a as any).path;
      const s = a.kind === 'unix' ? net.createConnection({ path }) : net.createConnection({ host: a.host, port: a.port });
      const timer = setTimeout(() => { s.destroy(); reject(new MilterError(`connect timed out after ${timeouts.connectMs} ms`)); }, timeouts.connectMs);
      s.once('connect', () => { clearTimeout(timer); resolve(s); });
      s.once('error', (e) => { clearTimeout(timer); reject(new MilterError(`connect: ${e.message}`)); });
    });
    const m = new MilterSession(spec, socket, timeouts, opts.macros);
    try {
      await m.negotiate(opts.protocol);
    } catch (e) {
      m.close();
      throw e;
    }
    return m;
  }

  private send(cmd: string, ...parts: (Buffer | string)[]): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      // the socket's callback is the backpressure: the next chunk waits for this one to be written
      this.socket.write(encodePacket(cmd, ...parts), (e) => (e ? reject(new MilterError(e.message)) : resolve()));
    });
  }

  /** The next packet within ms; PROGRESS restarts the clock. */
  private async next(ms: number): Promise<Packet> {
    for (;;) {
      const p = await this.nextRaw(ms);
      if (p.cmd !== SMFIR.PROGRESS) return p;
    }
  }

  private nextRaw(ms: number): Promise<Packet> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        this.fail(new MilterError(`no reply within ${ms} ms`));
        this.socket.destroy();
        reject(this.failure);
      }, ms);
      this.waiter = (p) => { clearTimeout(timer); if (p instanceof Error) reject(p); else resolve(p); };
    });
  }

  private async negotiate(protocol: number): Promise<void> {
    await this.send(SMFIC.OPTNEG, u32(protocol), u32(SMFIF_ALL), u32(SMFIP_OFFERED));
    const p = await this.next(this.timeouts.connectMs);
    if (p.cmd !== SMFIR.OPTNEG || p.data.length < 12) throw new MilterError(`option negotiation: unexpected reply "${p.cmd}"`);
    this.version = p.data.readUInt32BE(0);
    const actions = p.data.readUInt32BE(4);
    const flags = p.data.readUInt32BE(8);
    if (this.version < 2 || this.version > 6) throw new MilterError(`option negotiation: milter protocol version ${this.version} not supported`);
    if (actions & ~SMFIF_ALL) throw new MilterError(`option negotiation: milter asks for actions 0x${actions.toString(16)} not offered`);
    // flags outside the offer (Postfix too) are dropped, not fatal: newer milters ask for MDS_* sizes
    this.actions = actions;
    this.flags = flags & SMFIP_OFFERED;
    // protocol 6: the milter may name the macros it wants per stage
    let off = 12;
    while (off + 4 < p.data.length) {
      const stage = p.data.readUInt32BE(off);
      const end = p.data.indexOf(0, off + 4);
      const names = p.data.subarray(off + 4, end < 0 ? p.data.length : end).toString('utf8');
      off = end < 0 ? p.data.length : end + 1;
      const key = STAGE_BY_SMFIM[stage];
      if (key) this.macros[key] = names.split(/[\s,]+/).filter(Boolean);
    }
  }

  private async sendMacros(stage: MacroStage, lookup: MacroSource): Promise<void> {
    const parts: Buffer[] = [];
    for (const name of this.macros[stage]) {
      const v = lookup(name);
      if (v !== undefined) parts.push(cstr(name), cstr(v));
    }
    if (parts.length) await this.send(SMFIC.MACRO, MACRO_CMD[stage], ...parts);
  }

  /** Reads the verdict to a command; `what` names it in errors. Modifications are not allowed here. */
  private async verdict(ms: number, what: string): Promise<MilterVerdict> {
    const p = await this.next(ms);
    return this.toVerdict(p, what);
  }

  private toVerdict(p: Packet, what: string): MilterVerdict {
    switch (p.cmd) {
      case SMFIR.CONTINUE: return { action: 'continue' };
      case SMFIR.ACCEPT: return { action: 'accept' };
      case SMFIR.REJECT: return { action: 'reject' };
      case SMFIR.TEMPFAIL: return { action: 'tempfail' };
      case SMFIR.DISCARD: return { action: 'discard' };
      case SMFIR.SHUTDOWN: case SMFIR.CONN_FAIL: return { action: 'tempfail' };
      case SMFIR.REPLYCODE: {
        const text = splitStrings(p.data)[0] ?? '';
        const reply = parseReplyCode(text);
        if (!reply) throw new MilterError(`${what}: malformed reply code "${text.slice(0, 100)}"`);
        return reply.code >= 500 ? { action: 'reject', reply } : { action: 'tempfail', reply };
      }
      default: throw new MilterError(`${what}: unexpected reply "${p.cmd}"`);
    }
  }

  /** One event: its macros, the command, and the reply unless the milter said it sends none. */
  private async event(stage: MacroStage, lookup: MacroSource, skipFlag: number, noReplyFlag: number, cmd: string, ...parts: (Buffer | string)[]): Promise<MilterVerdict> {
    if (this.flags & skipFlag) return { action: 'continue' };
    await this.sendMacros(stage, lookup);
    await this.send(cmd, ...parts);
    if (this.flags & noReplyFlag) return { action: 'continue' };
    return this.verdict(this.timeouts.commandMs, cmd);
  }

  /** family: '4', '6', 'L' (local), 'U' (unknown). */
  connectEvent(hostname: string, address: string, port: number, lookup: MacroSource): Promise<MilterVerdict> {
    const family = net.isIPv6(address) ? '6' : net.isIPv4(address) ? '4' : 'U';
    const payload = family === 'U' ? [cstr(hostname), 'U'] : [cstr(hostname), family, (() => { const b = Buffer.alloc(2); b.writeUInt16BE(port & 0xffff); return b; })(), cstr(address)];
    return this.event('connect', lookup, SMFIP.NOCONNECT, SMFIP.NR_CONN, SMFIC.CONNECT, ...payload);
  }

  helo(name: string, lookup: MacroSource): Promise<MilterVerdict> {
    return this.event('helo', lookup, SMFIP.NOHELO, SMFIP.NR_HELO, SMFIC.HELO, cstr(name));
  }

  /** args: `<sender>` then ESMTP parameters (`SIZE=123`). */
  mail(args: string[], lookup: MacroSource): Promise<MilterVerdict> {
    this.skipBody = false;
    return this.event('mail', lookup, SMFIP.NOMAIL, SMFIP.NR_MAIL, SMFIC.MAIL, ...args.map(cstr));
  }

  rcpt(args: string[], lookup: MacroSource): Promise<MilterVerdict> {
    return this.event('rcpt', lookup, SMFIP.NORCPT, SMFIP.NR_RCPT, SMFIC.RCPT, ...args.map(cstr));
  }

  data(lookup: MacroSource): Promise<MilterVerdict> {
    return this.event('data', lookup, SMFIP.NODATA, SMFIP.NR_DATA, SMFIC.DATA);
  }

  /** One header field; value as received, folding kept as LF-separated lines (the sendmail convention). */
  header(name: string, value: string): Promise<MilterVerdict> {
    if (this.flags & SMFIP.NOHDRS) return Promise.resolve({ action: 'continue' });
    // without HDR_LEADSPC the milter gets the value without the space after the colon, as from sendmail
    const v = (this.flags & SMFIP.HDR_LEADSPC ? value : value.replace(/^[ \t]/, '')).replace(/\r\n/g, '\n');
    return this.send(SMFIC.HEADER, cstr(name), cstr(v)).then(() => (this.flags & SMFIP.NR_HDR ? { action: 'continue' } as MilterVerdict : this.verdict(this.timeouts.commandMs, 'header')));
  }

  eoh(lookup: MacroSource): Promise<MilterVerdict> {
    return this.event('eoh', lookup, SMFIP.NOEOH, SMFIP.NR_EOH, SMFIC.EOH);
  }

  /** One body chunk (at most MILTER_CHUNK_SIZE bytes; longer ones are cut). */
  async body(chunk: Buffer): Promise<MilterVerdict> {
    if (this.flags & SMFIP.NOBODY || this.skipBody) return { action: 'continue' };
    for (let off = 0; off < chunk.length; off += MILTER_CHUNK_SIZE) {
      await this.send(SMFIC.BODY, chunk.subarray(off, off + MILTER_CHUNK_SIZE));
      if (this.flags & SMFIP.NR_BODY) continue;
      const p = await this.next(this.timeouts.contentMs);
      if (p.cmd === SMFIR.SKIP && this.flags & SMFIP.SKIP) { this.skipBody = true; return { action: 'continue' }; }
      const v = this.toVerdict(p, 'body');
      if (v.action !== 'continue') return v;
    }
    return { action: 'continue' };
  }

  /**
   * End of message: the modifications the milter asks for, in order, then its
   * verdict. Replacement body chunks go to onBody as they arrive (never
   * collected here), awaited: a slow consumer holds up the reading.
   */
  async eom(lookup: MacroSource, onBody: (chunk: Buffer) => Promise<void>): Promise<{ verdict: MilterVerdict; edits: MilterEdit[] }> {
    await this.sendMacros('eom', lookup);
    await this.send(SMFIC.BODYEOB);
    const edits: MilterEdit[] = [];
    const allowed = (flag: number, what: string) => {
      if (!(this.actions & flag)) throw new MilterError(`end of message: ${what} not negotiated`);
    };
    for (;;) {
      const p = await this.next(this.timeouts.contentMs);
      // bounded: a milter looping on edits is broken, not a reason to grow without end
      if (edits.length >= MAX_EDITS) throw new MilterError(`end of message: more than ${MAX_EDITS} modifications`);
      const s = splitStrings(p.data);
      switch (p.cmd) {
        case SMFIR.ADDHEADER: allowed(0x01, 'add header'); edits.push({ type: 'add-header', name: need(s[0], 'header name'), value: s[1] ?? '' }); break;
        case SMFIR.INSHEADER: case SMFIR.CHGHEADER: {
          allowed(p.cmd === SMFIR.INSHEADER ? 0x01 : 0x10, p.cmd === SMFIR.INSHEADER ? 'insert header' : 'change header');
          if (p.data.length < 5) throw new MilterError('end of message: short header edit');
          const [name, value] = splitStrings(p.data.subarray(4));
          const index = p.data.readUInt32BE(0);
          edits.push({ type: p.cmd === SMFIR.INSHEADER ? 'insert-header' : 'change-header', index, name: need(name, 'header name'), value: value ?? '' });
          break;
        }
        case SMFIR.ADDRCPT: allowed(0x04, 'add recipient'); edits.push({ type: 'add-rcpt', address: need(s[0], 'recipient') }); break;
        case SMFIR.ADDRCPT_PAR: allowed(0x80, 'add recipient with parameters'); edits.push({ type: 'add-rcpt', address: need(s[0], 'recipient'), args: s[1] || undefined }); break;
        case SMFIR.DELRCPT: allowed(0x08, 'delete recipient'); edits.push({ type: 'delete-rcpt', address: need(s[0], 'recipient') }); break;
        case SMFIR.CHGFROM: allowed(0x40, 'change sender'); edits.push({ type: 'change-from', address: need(s[0], 'sender'), args: s[1] || undefined }); break;
        case SMFIR.QUARANTINE: allowed(0x20, 'quarantine'); edits.push({ type: 'quarantine', reason: s[0] ?? '' }); break;
        case SMFIR.REPLBODY: allowed(0x02, 'replace body'); await onBody(p.data); break;
        default:
          return { verdict: this.toVerdict(p, 'end of message'), edits };
      }
    }
  }

  /** The message is over without an end (RSET, a rejected transaction): the milter forgets it. */
  async abortMessage(): Promise<void> {
    this.skipBody = false;
    await this.send(SMFIC.ABORT).catch(() => undefined);
  }

  /** QUIT and close. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.failure) this.socket.end(encodePacket(SMFIC.QUIT));
    else this.socket.destroy();
    this.failure ??= new MilterError('closed');
  }
}

function need(v: string | undefined, what: string): string {
  if (!v) throw new MilterError(`end of message: empty ${what}`);
  return v;
}

/** Connect to a milter (the module's entry point): see MilterSession. */
export function connectMilter(spec: MilterSpec, timeouts: MilterTimeouts, opts: MilterSessionOptions): Promise<MilterSession> {
  return MilterSession.connect(spec, timeouts, opts);
}
