/**
 * DNS messages on the wire (RFC 1035): header, question, and the record types
 * a mail server looks up. Names are written without the trailing dot; the root
 * is ''. Decoding checks every length against the packet, because packets come
 * from the network: a bad one throws DnsWireError, never reads out of bounds.
 */
import * as net from 'node:net';

export interface MxData { priority: number; exchange: string }
/** A TLSA record (RFC 6698): certificate usage, selector, matching type, and the association data. */
export interface TlsaData { usage: number; selector: number; matchingType: number; data: Buffer }
export interface SoaData {
  nsname: string; hostmaster: string; serial: number;
  refresh: number; retry: number; expire: number; minttl: number;
}

/** What each known type's `data` holds (the shapes node:dns uses). */
export interface DnsRecordData {
  A: string; AAAA: string; CNAME: string; NS: string; PTR: string;
  MX: MxData; TXT: string[]; SOA: SoaData; TLSA: TlsaData;
}
export type DnsRecordType = keyof DnsRecordData;

interface RecordShape<T extends DnsRecordType> { name: string; type: T; class: number; ttl: number; data: DnsRecordData[T] }
/** A record of type T; for a union of types, the union of their records (so `type` narrows `data`). */
export type DnsRecordOf<T extends DnsRecordType> = T extends DnsRecordType ? RecordShape<T> : never;
/** OPT (EDNS0, class = the sender's UDP payload size) and types we do not parse: raw RDATA. */
export interface DnsRawRecord { name: string; type: 'OPT' | `TYPE${number}`; class: number; ttl: number; data: Buffer }
export type DnsRecord = DnsRecordOf<DnsRecordType> | DnsRawRecord;

export interface DnsQuestion { name: string; type: number; class: number }

export interface DnsMessage {
  id: number; qr: boolean; opcode: number; aa: boolean; tc: boolean; rd: boolean; ra: boolean; rcode: number;
  /** Authentic Data (RFC 4035 3.2.3): the validating resolver says the answer is DNSSEC-secure. Absent means clear. */
  ad?: boolean;
  /** Checking Disabled (RFC 4035 3.2.2). */
  cd?: boolean;
  questions: DnsQuestion[]; answers: DnsRecord[]; authorities: DnsRecord[]; additionals: DnsRecord[];
}

export const DNS_TYPES: Record<DnsRecordType | 'OPT', number> = {
  A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, OPT: 41, TLSA: 52,
};
const TYPE_NAMES = new Map(Object.entries(DNS_TYPES).map(([k, v]) => [v, k]));

export function dnsTypeName(code: number): string { return TYPE_NAMES.get(code) ?? `TYPE${code}`; }

export const DNS_RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const DNS_CLASS_IN = 1;

export class DnsWireError extends Error {
  constructor(problem: string) { super(`malformed DNS message: ${problem}`); this.name = 'DnsWireError'; }
}

// ------------------------------------------------------------ addresses

/** 4 or 16 bytes of an IPv4 or IPv6 address in text form (zone id ignored). */
export function ipToBytes(ip: string): Buffer {
  const addr = ip.replace(/%.*$/, '');
  if (net.isIPv4(addr)) return Buffer.from(addr.split('.').map(Number));
  if (!net.isIPv6(addr)) throw new Error(`not an IP address: ${ip}`);
  let text = addr;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) { // ::ffff:1.2.3.4 — turn the dotted tail into two groups
    const b = v4[1].split('.').map(Number);
    text = text.slice(0, v4.index) + ((b[0] << 8) | b[1]).toString(16) + ':' + ((b[2] << 8) | b[3]).toString(16);
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const groups = (s: string | undefined) => (s ? s.split(':') : []);
  const h = groups(head), t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** RFC 5952 text of 16 address bytes: lower case, longest zero run as `::`. */
export function formatIPv6(b: Buffer): string {
  const g = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

// ------------------------------------------------------------ encoding

class Writer {
  private buf = Buffer.alloc(512);
  len = 0;
  /** Offsets of names already written, by lower-cased name, for compression. */
  private names = new Map<string, number>();

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const bigger = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(bigger, 0, 0, this.len);
    this.buf = bigger;
  }
  u8(v: number): void { this.room(1); this.buf.writeUInt8(v, this.len); this.len += 1; }
  u16(v: number): void { this.room(2); this.buf.writeUInt16BE(v, this.len); this.len += 2; }
  u32(v: number): void { this.room(4); this.buf.writeUInt32BE(v >>> 0, this.len); this.len += 4; }
  bytes(b: Buffer): void { this.room(b.length); b.copy(this.buf, this.len); this.len += b.length; }
  patch16(at: number, v: number): void { this.buf.writeUInt16BE(v, at); }

  name(name: string): void {
    const labels = name.replace(/\.$/, '').split('.').filter((l, i, a) => l !== '' || a.length > 1);
    if (labels.some((l) => l === '')) throw new Error(`bad domain name "${name}": empty label`);
    if (labels.join('.').length > 253) throw new Error(`bad domain name "${name}": longer than 253 characters`);
    for (let i = 0; i < labels.length; i++) {
      const suffix = labels.slice(i).join('.').toLowerCase();
      const seen = this.names.get(suffix);
      if (seen !== undefined) { this.u16(0xc000 | seen); return; }
      if (this.len < 0x4000) this.names.set(suffix, this.len);
      const label = Buffer.from(labels[i], 'utf8');
      if (label.length > 63) throw new Error(`bad domain name "${name}": label longer than 63 bytes`);
      this.u8(label.length);
      this.bytes(label);
    }
    this.u8(0);
  }

  characterString(s: Buffer): void {
    if (s.length > 255) throw new Error('TXT character-string longer than 255 bytes');
    this.u8(s.length);
    this.bytes(s);
  }

  result(): Buffer { return Buffer.from(this.buf.subarray(0, this.len)); }
}

function writeRecord(w: Writer, r: DnsRecord): void {
  w.name(r.name);
  w.u16(r.type === 'OPT' ? DNS_TYPES.OPT : r.type.startsWith('TYPE') ? parseInt(r.type.slice(4), 10) : DNS_TYPES[r.type as DnsRecordType]);
  w.u16(r.class);
  w.u32(r.ttl);
  const lengthAt = w.len;
  w.u16(0);
  switch (r.type) {
    case 'A': case 'AAAA': {
      const b = ipToBytes(r.data);
      if (b.length !== (r.type === 'A' ? 4 : 16)) throw new Error(`${r.type} record with wrong address family: ${r.data}`);
      w.bytes(b);
      break;
    }
    case 'CNAME': case 'NS': case 'PTR': w.name(r.data); break;
    case 'MX': w.u16(r.data.priority); w.name(r.data.exchange); break;
    case 'TXT': for (const s of r.data) w.characterString(Buffer.from(s, 'utf8')); break;
    case 'SOA':
      w.name(r.data.nsname); w.name(r.data.hostmaster);
      for (const v of [r.data.serial, r.data.refresh, r.data.retry, r.data.expire, r.data.minttl]) w.u32(v);
      break;
    case 'TLSA': w.u8(r.data.usage); w.u8(r.data.selector); w.u8(r.data.matchingType); w.bytes(r.data.data); break;
    default: w.bytes(r.data);
  }
  w.patch16(lengthAt, w.len - lengthAt - 2);
}

export function encodeDnsMessage(m: DnsMessage): Buffer {
  const w = new Writer();
  w.u16(m.id);
  w.u16((m.qr ? 0x8000 : 0) | ((m.opcode & 0xf) << 11) | (m.aa ? 0x400 : 0) | (m.tc ? 0x200 : 0) |
    (m.rd ? 0x100 : 0) | (m.ra ? 0x80 : 0) | (m.ad ? 0x20 : 0) | (m.cd ? 0x10 : 0) | (m.rcode & 0xf));
  for (const n of [m.questions.length, m.answers.length, m.authorities.length, m.additionals.length]) w.u16(n);
  for (const q of m.questions) { w.name(q.name); w.u16(q.type); w.u16(q.class); }
  for (const r of [...m.answers, ...m.authorities, ...m.additionals]) writeRecord(w, r);
  return w.result();
}

/**
 * A recursive query for one name and type, with an EDNS0 OPT record when `ednsSize` is given.
 * `dnssec` sets AD in the query (RFC 6840 5.7: asks the resolver to report whether the answer
 * validated) and DO in the OPT record (RFC 3225), as Postfix's smtp_dns_support_level=dnssec does.
 */
export function encodeDnsQuery(id: number, name: string, type: DnsRecordType, ednsSize?: number, dnssec = false): Buffer {
  const opt: DnsRawRecord[] = ednsSize ? [{ name: '', type: 'OPT', class: ednsSize, ttl: dnssec ? 0x8000 : 0, data: Buffer.alloc(0) }] : [];
  return encodeDnsMessage({
    id, qr: false, opcode: 0, aa: false, tc: false, rd: true, ra: false, rcode: 0, ad: dnssec,
    questions: [{ name, type: DNS_TYPES[type], class: DNS_CLASS_IN }], answers: [], authorities: [], additionals: opt,
  });
}

// ------------------------------------------------------------ decoding

class Reader {
  constructor(readonly buf: Buffer, public pos = 0) {}

  need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw new DnsWireError(`${what} runs past the end of the packet`);
  }
  u8(): number { this.need(1, 'field'); return this.buf.readUInt8(this.pos++); }
  u16(): number { this.need(2, 'field'); const v = this.buf.readUInt16BE(this.pos); this.pos += 2; return v; }
  u32(): number { this.need(4, 'field'); const v = this.buf.readUInt32BE(this.pos); this.pos += 4; return v; }
  bytes(n: number, what: string): Buffer { this.need(n, what); const b = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return b; }

  /** A possibly compressed name; pointers may only point backwards, so loops are impossible. */
  name(): string {
    const labels: string[] = [];
    let at = this.pos, jumped = false, total = 0;
    for (;;) {
      if (at >= this.buf.length) throw new DnsWireError('name runs past the end of the packet');
      const len = this.buf[at];
      if ((len & 0xc0) === 0xc0) {
        if (at + 1 >= this.buf.length) throw new DnsWireError('name pointer runs past the end of the packet');
        const target = ((len & 0x3f) << 8) | this.buf[at + 1];
        if (target >= at) throw new DnsWireError('name pointer does not point backwards');
        if (!jumped) this.pos = at + 2;
        jumped = true;
        at = target;
        continue;
      }
      if (len & 0xc0) throw new DnsWireError(`unknown label type 0x${len.toString(16)}`);
      if (len === 0) { if (!jumped) this.pos = at + 1; break; }
      if (at + 1 + len > this.buf.length) throw new DnsWireError('label runs past the end of the packet');
      total += len + 1;
      if (total > 255) throw new DnsWireError('name longer than 255 bytes');
      labels.push(this.buf.toString('utf8', at + 1, at + 1 + len));
      at += 1 + len;
    }
    return labels.join('.');
  }
}

function readRecord(r: Reader): DnsRecord {
  const name = r.name();
  const code = r.u16(), cls = r.u16();
  const rawTtl = r.u32();
  const ttl = rawTtl > 0x7fffffff ? 0 : rawTtl; // RFC 2181 8: a TTL with the top bit set means zero
  const rdlength = r.u16();
  r.need(rdlength, 'record data');
  const end = r.pos + rdlength;
  const type = dnsTypeName(code);
  const base = { name, class: cls, ttl };
  let rec: DnsRecord;
  switch (type) {
    case 'A': case 'AAAA': {
      const want = type === 'A' ? 4 : 16;
      if (rdlength !== want) throw new DnsWireError(`${type} record data of ${rdlength} bytes`);
      const b = r.bytes(want, type);
      rec = { ...base, type, data: type === 'A' ? Array.from(b).join('.') : formatIPv6(b) };
      break;
    }
    case 'CNAME': case 'NS': case 'PTR': rec = { ...base, type, data: r.name() }; break;
    case 'MX': { const priority = r.u16(); rec = { ...base, type, data: { exchange: r.name(), priority } }; break; }
    case 'TXT': {
      const strings: string[] = [];
      while (r.pos < end) strings.push(r.bytes(r.u8(), 'TXT string').toString('utf8'));
      rec = { ...base, type, data: strings };
      break;
    }
    case 'SOA': {
      const nsname = r.name(), hostmaster = r.name();
      rec = { ...base, type, data: { nsname, hostmaster, serial: r.u32(), refresh: r.u32(), retry: r.u32(), expire: r.u32(), minttl: r.u32() } };
      break;
    }
    case 'TLSA': {
      if (rdlength < 3) throw new DnsWireError(`TLSA record data of ${rdlength} bytes`);
      const usage = r.u8(), selector = r.u8(), matchingType = r.u8();
      rec = { ...base, type, data: { usage, selector, matchingType, data: Buffer.from(r.bytes(rdlength - 3, 'TLSA data')) } };
      break;
    }
    default: rec = { ...base, type: type as DnsRawRecord['type'], data: Buffer.from(r.bytes(rdlength, 'record data')) };
  }
  if (r.pos !== end) throw new DnsWireError(`${type} record data length ${rdlength} does not match its content`);
  return rec;
}

export function decodeDnsMessage(buf: Buffer): DnsMessage {
  if (buf.length < 12) throw new DnsWireError(`only ${buf.length} bytes, shorter than a header`);
  const r = new Reader(buf);
  const id = r.u16(), flags = r.u16();
  const counts = [r.u16(), r.u16(), r.u16(), r.u16()];
  const questions: DnsQuestion[] = [];
  for (let i = 0; i < counts[0]; i++) questions.push({ name: r.name(), type: r.u16(), class: r.u16() });
  const section = (n: number) => Array.from({ length: n }, () => readRecord(r));
  return {
    id, qr: !!(flags & 0x8000), opcode: (flags >> 11) & 0xf, aa: !!(flags & 0x400), tc: !!(flags & 0x200),
    rd: !!(flags & 0x100), ra: !!(flags & 0x80), rcode: flags & 0xf,
    // AD and CD appear only when set, so messages without DNSSEC decode to the shape they always had
    ...(flags & 0x20 ? { ad: true } : {}), ...(flags & 0x10 ? { cd: true } : {}),
    questions, answers: section(counts[1]), authorities: section(counts[2]), additionals: section(counts[3]),
  };
}
