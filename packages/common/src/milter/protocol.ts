/**
 * The Sendmail milter wire (protocol version 6, as Postfix's milter8.c speaks
 * it): each packet is a 4-byte big-endian length (command byte included), one
 * command byte, then the payload; strings are NUL-terminated.
 */

/** MTA -> milter commands. */
export const SMFIC = {
  ABORT: 'A', BODY: 'B', CONNECT: 'C', MACRO: 'D', BODYEOB: 'E', HELO: 'H', QUIT_NC: 'K', HEADER: 'L',
  MAIL: 'M', EOH: 'N', OPTNEG: 'O', QUIT: 'Q', RCPT: 'R', DATA: 'T', UNKNOWN: 'U',
} as const;

/** milter -> MTA replies. */
export const SMFIR = {
  ADDRCPT: '+', DELRCPT: '-', ADDRCPT_PAR: '2', SHUTDOWN: '4', ACCEPT: 'a', REPLBODY: 'b', CONTINUE: 'c',
  DISCARD: 'd', CHGFROM: 'e', CONN_FAIL: 'f', ADDHEADER: 'h', INSHEADER: 'i', SETSYMLIST: 'l', CHGHEADER: 'm',
  PROGRESS: 'p', QUARANTINE: 'q', REJECT: 'r', SKIP: 's', TEMPFAIL: 't', REPLYCODE: 'y', OPTNEG: 'O',
} as const;

/** Actions a milter may ask for (SMFIF_*). */
export const SMFIF = {
  ADDHDRS: 0x01, CHGBODY: 0x02, ADDRCPT: 0x04, DELRCPT: 0x08, CHGHDRS: 0x10, QUARANTINE: 0x20,
  CHGFROM: 0x40, ADDRCPT_PAR: 0x80, SETSYMLIST: 0x100,
} as const;
export const SMFIF_ALL = 0x1ff;

/** Protocol flags (SMFIP_*): events a milter does not want, replies it will not send. */
export const SMFIP = {
  NOCONNECT: 0x1, NOHELO: 0x2, NOMAIL: 0x4, NORCPT: 0x8, NOBODY: 0x10, NOHDRS: 0x20, NOEOH: 0x40,
  NR_HDR: 0x80, NOUNKNOWN: 0x100, NODATA: 0x200, SKIP: 0x400, RCPT_REJ: 0x800, NR_CONN: 0x1000,
  NR_HELO: 0x2000, NR_MAIL: 0x4000, NR_RCPT: 0x8000, NR_DATA: 0x10000, NR_UNKN: 0x20000, NR_EOH: 0x40000,
  NR_BODY: 0x80000, HDR_LEADSPC: 0x100000,
} as const;
/** What Postern lets a milter choose: every no-send, no-reply flag, SKIP and HDR_LEADSPC (not RCPT_REJ: rejected recipients are not sent). */
export const SMFIP_OFFERED = 0x1fffff & ~SMFIP.RCPT_REJ;

/** SMFIR_SETSYMLIST / option-negotiation macro stages. */
export const SMFIM = { CONNECT: 0, HELO: 1, ENVFROM: 2, ENVRCPT: 3, DATA: 4, EOM: 5, EOH: 6 } as const;

/** A body chunk is at most this long (MILTER_CHUNK_SIZE). */
export const MILTER_CHUNK_SIZE = 65535;
/** A reply longer than this is a protocol error, not a buffer that grows (REPLBODY chunks are far smaller). */
export const MILTER_MAX_PACKET = 1024 * 1024 + 1024;

export interface Packet { cmd: string; data: Buffer }

export function encodePacket(cmd: string, ...parts: (Buffer | string)[]): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head.write(cmd, 4, 'latin1');
  return Buffer.concat([head, body]);
}

/** A NUL-terminated string. */
export const cstr = (s: string): Buffer => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);

export const u32 = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0, 0); return b; };

/** The NUL-terminated strings of a payload. */
export function splitStrings(data: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0) { out.push(data.subarray(start, i).toString('utf8')); start = i + 1; }
  }
  if (start < data.length) out.push(data.subarray(start).toString('utf8'));
  return out;
}

export class MilterProtocolError extends Error {}

/** Cuts a byte stream into packets; a packet longer than `max` is an error. */
export class PacketDecoder {
  private buf: Buffer = Buffer.alloc(0);
  constructor(private readonly max = MILTER_MAX_PACKET) {}

  push(chunk: Buffer): Packet[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Packet[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len < 1 || len > this.max) throw new MilterProtocolError(`packet length ${len} out of range`);
      if (this.buf.length < 4 + len) break;
      out.push({ cmd: String.fromCharCode(this.buf[4]), data: Buffer.from(this.buf.subarray(5, 4 + len)) });
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}
