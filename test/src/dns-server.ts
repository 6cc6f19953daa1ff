/**
 * An authoritative DNS server for tests, speaking the real protocol over UDP
 * and TCP on loopback, serving a zone given as data. It answers NXDOMAIN for
 * names it has nothing under, NODATA (with an SOA for the negative TTL) for
 * names that exist with other types, truncates UDP answers that do not fit the
 * client's buffer, and counts the queries it gets so tests can see the cache.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import {
  DnsMessage, DnsRecord, DnsQuestion, DNS_RCODE, DNS_TYPES, DNS_CLASS_IN, encodeDnsMessage, decodeDnsMessage, dnsTypeName, ptrName,
} from '../../packages/common/dist/index.js';

export type TestRecordType = 'A' | 'AAAA' | 'MX' | 'TXT' | 'PTR' | 'CNAME';

export interface TestRecord {
  /** Owner name; for PTR an IP address may be given and is turned into its reverse name. */
  name: string;
  type: TestRecordType;
  /** A/AAAA: address; MX: {priority, exchange} or "10 mx.example."; TXT: text or character-strings; PTR/CNAME: name. */
  value: string | string[] | { priority: number; exchange: string };
  ttl?: number;
}

export interface TestDnsServerOptions {
  records?: TestRecord[];
  host?: string;
  /** UDP port (TCP uses the same); 0 = a free one. */
  port?: number;
  /** Largest UDP answer, whatever the client's EDNS buffer says (to force truncation). */
  maxUdpSize?: number;
  /** TTL of the SOA sent with negative answers (and its minimum field). */
  negativeTtl?: number;
}

const norm = (name: string) => name.trim().replace(/\.$/, '').toLowerCase();

export class TestDnsServer {
  private records: DnsRecord[] = [];
  private readonly silent = new Set<string>();
  private readonly failing = new Set<string>();
  private readonly counts = new Map<string, number>();
  /** Queries received per transport (a TCP count shows a client retried after truncation). */
  readonly transport = { udp: 0, tcp: 0 };
  private udp?: dgram.Socket;
  private tcp?: net.Server;
  private readonly tcpClients = new Set<net.Socket>();
  readonly host: string;
  port: number;

  constructor(private readonly opts: TestDnsServerOptions = {}) {
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? 0;
    for (const r of opts.records ?? []) this.add(r);
  }

  get address(): string { return `${this.host}:${this.port}`; }

  /** Binds UDP, then TCP on the same port (retrying with a new port if TCP's is taken). */
  async start(): Promise<this> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const udp = dgram.createSocket(net.isIPv6(this.host) ? 'udp6' : 'udp4');
      await new Promise<void>((resolve, reject) => { udp.once('error', reject); udp.bind(this.opts.port ?? 0, this.host, () => resolve()); });
      const port = udp.address().port;
      const tcp = net.createServer((sock) => this.serveTcp(sock));
      const ok = await new Promise<boolean>((resolve) => {
        tcp.once('error', () => resolve(false));
        tcp.listen(port, this.host, () => resolve(true));
      });
      if (!ok) { udp.close(); if (this.opts.port) break; continue; }
      udp.on('error', () => { /* a test server outlives odd packets and ICMP noise */ });
      udp.on('message', (buf, rinfo) => {
        const reply = this.answer(buf, 'udp');
        if (reply) udp.send(reply, rinfo.port, rinfo.address);
      });
      this.udp = udp;
      this.tcp = tcp;
      this.port = port;
      return this;
    }
    throw new Error(`TestDnsServer: could not bind UDP and TCP on one port of ${this.host}`);
  }

  async close(): Promise<void> {
    for (const s of this.tcpClients) s.destroy();
    await Promise.all([
      new Promise<void>((r) => (this.udp ? this.udp.close(() => r()) : r())),
      new Promise<void>((r) => (this.tcp ? this.tcp.close(() => r()) : r())),
    ]);
    this.udp = undefined;
    this.tcp = undefined;
  }

  add(record: TestRecord): void { this.records.push(toWire(record)); }

  remove(name: string, type?: TestRecordType): void {
    const n = norm(net.isIP(name) && type === 'PTR' ? ptrName(name) : name);
    this.records = this.records.filter((r) => !(norm(r.name) === n && (!type || r.type === type)));
  }

  /** Never answer queries for this name (to test timeouts). */
  timeoutFor(name: string): void { this.silent.add(norm(name)); }
  /** Answer SERVFAIL for this name. */
  servfailFor(name: string): void { this.failing.add(norm(name)); }
  /** Back to normal for this name. */
  heal(name: string): void { this.silent.delete(norm(name)); this.failing.delete(norm(name)); }

  /** How many queries for (name, type) arrived, over UDP and TCP together. */
  queries(name: string, type: string): number { return this.counts.get(`${norm(name)}|${type.toUpperCase()}`) ?? 0; }

  // ---------------------------------------------------------- protocol

  private serveTcp(sock: net.Socket): void {
    this.tcpClients.add(sock);
    sock.on('close', () => this.tcpClients.delete(sock));
    sock.on('error', () => sock.destroy());
    let got = Buffer.alloc(0);
    sock.on('data', (chunk) => {
      got = Buffer.concat([got, chunk]);
      while (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) {
        const reply = this.answer(got.subarray(2, 2 + got.readUInt16BE(0)), 'tcp');
        got = got.subarray(2 + got.readUInt16BE(0));
        if (!reply) continue;
        const len = Buffer.alloc(2);
        len.writeUInt16BE(reply.length);
        sock.write(Buffer.concat([len, reply]));
      }
    });
  }

  /** The reply to one query packet, or null to stay silent. */
  answer(packet: Buffer, transport: 'udp' | 'tcp'): Buffer | null {
    let query: DnsMessage;
    try { query = decodeDnsMessage(packet); } catch {
      if (packet.length < 12) return null;
      return encodeDnsMessage(reply({ id: packet.readUInt16BE(0), rd: false } as DnsMessage, [], DNS_RCODE.FORMERR));
    }
    if (query.qr) return null;
    this.transport[transport]++;
    if (query.opcode !== 0) return encodeDnsMessage(reply(query, query.questions, DNS_RCODE.NOTIMP));
    if (query.questions.length !== 1) return encodeDnsMessage(reply(query, query.questions, DNS_RCODE.FORMERR));
    const q = query.questions[0];
    const name = norm(q.name);
    this.counts.set(`${name}|${dnsTypeName(q.type)}`, (this.counts.get(`${name}|${dnsTypeName(q.type)}`) ?? 0) + 1);
    if (this.silent.has(name)) return null;
    if (this.failing.has(name)) return encodeDnsMessage(reply(query, [q], DNS_RCODE.SERVFAIL));

    const msg = this.lookup(query, q);
    const opt = query.additionals.find((r) => r.type === 'OPT');
    if (opt) msg.additionals.push({ name: '', type: 'OPT', class: 1232, ttl: 0, data: Buffer.alloc(0) });
    const full = encodeDnsMessage(msg);
    const limit = Math.min(Math.max(opt ? opt.class : 512, 512), this.opts.maxUdpSize ?? Infinity);
    if (transport === 'tcp' || full.length <= limit) return full;
    return encodeDnsMessage({ ...msg, tc: true, answers: [], authorities: [], additionals: [] });
  }

  private lookup(query: DnsMessage, q: DnsQuestion): DnsMessage {
    const msg = reply(query, [q], DNS_RCODE.NOERROR);
    if (q.class !== DNS_CLASS_IN) { msg.rcode = DNS_RCODE.REFUSED; return msg; }
    let owner = norm(q.name);
    // Follow CNAMEs inside our data, as an authoritative server does within its zone.
    for (let hops = 0; hops < 8; hops++) {
      const here = this.records.filter((r) => norm(r.name) === owner);
      const wanted = here.filter((r) => DNS_TYPES[r.type as keyof typeof DNS_TYPES] === q.type);
      const alias = here.find((r) => r.type === 'CNAME');
      if (wanted.length) { msg.answers.push(...wanted); return msg; }
      if (alias && alias.type === 'CNAME') { msg.answers.push(alias); owner = norm(alias.data); continue; }
      // A name exists when it or anything below it has records (RFC 8020: empty non-terminals are NODATA).
      const exists = this.records.some((r) => norm(r.name) === owner || norm(r.name).endsWith('.' + owner));
      if (!exists) msg.rcode = DNS_RCODE.NXDOMAIN;
      msg.authorities.push(this.soa(owner));
      return msg;
    }
    return msg;
  }

  private soa(owner: string): DnsRecord {
    const ttl = this.opts.negativeTtl ?? 60;
    const zone = owner.split('.').slice(-2).join('.');
    return {
      name: zone, type: 'SOA', class: DNS_CLASS_IN, ttl,
      data: { nsname: `ns.${zone}`, hostmaster: `hostmaster.${zone}`, serial: 1, refresh: 3600, retry: 600, expire: 86400, minttl: ttl },
    };
  }
}

function reply(query: DnsMessage, questions: DnsQuestion[], rcode: number): DnsMessage {
  return {
    id: query.id, qr: true, opcode: 0, aa: true, tc: false, rd: query.rd, ra: false, rcode,
    questions, answers: [], authorities: [], additionals: [],
  };
}

/** Character-strings of at most 255 bytes, split where no UTF-8 sequence is cut. */
function characterStrings(text: string): string[] {
  const bytes = Buffer.from(text, 'utf8');
  const out: string[] = [];
  for (let at = 0; at < bytes.length || out.length === 0;) {
    let end = Math.min(at + 255, bytes.length);
    while (end < bytes.length && end > at && (bytes[end] & 0xc0) === 0x80) end--;
    out.push(bytes.toString('utf8', at, end));
    at = end;
    if (at >= bytes.length) break;
  }
  return out;
}

function toWire(r: TestRecord): DnsRecord {
  const base = { name: norm(r.type === 'PTR' && net.isIP(r.name) ? ptrName(r.name) : r.name), class: DNS_CLASS_IN, ttl: r.ttl ?? 300 };
  const v = r.value;
  switch (r.type) {
    case 'A': case 'AAAA':
      if (typeof v !== 'string' || (r.type === 'A' ? !net.isIPv4(v) : !net.isIPv6(v))) throw new Error(`${r.type} record for ${r.name}: bad address ${JSON.stringify(v)}`);
      return { ...base, type: r.type, data: v };
    case 'PTR': case 'CNAME':
      if (typeof v !== 'string') throw new Error(`${r.type} record for ${r.name}: value must be a name`);
      return { ...base, type: r.type, data: norm(v) };
    case 'MX': {
      if (typeof v === 'object' && !Array.isArray(v)) return { ...base, type: 'MX', data: { priority: v.priority, exchange: norm(v.exchange) } };
      const m = typeof v === 'string' ? /^(\d+)\s+(\S+)$/.exec(v.trim()) : null;
      if (!m) throw new Error(`MX record for ${r.name}: want "PRIORITY HOST" or {priority, exchange}`);
      return { ...base, type: 'MX', data: { priority: parseInt(m[1], 10), exchange: norm(m[2]) } };
    }
    case 'TXT':
      return { ...base, type: 'TXT', data: (Array.isArray(v) ? v : [v as string]).flatMap(characterStrings) };
  }
}
