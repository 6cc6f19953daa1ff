/**
 * The project's one DNS layer: a stub resolver that asks the configured
 * recursive servers (`dns_servers`, else /etc/resolv.conf) over UDP, falls back
 * to TCP when an answer is truncated, and keeps a cache that honours TTLs
 * (negative answers too, RFC 2308) so a burst of mail to one domain costs one
 * lookup. Every lookup in the project (MX delivery, PTR and DNSBL checks,
 * SPF/DKIM/DMARC through mailauth) goes through here.
 */
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { randomInt } from 'node:crypto';
import { ConfigError, MainConfig } from '../config/config.js';
import {
  DnsMessage, DnsRecord, DnsRecordOf, MxData, DNS_RCODE, DnsRecordType, DNS_TYPES, DNS_CLASS_IN,
  decodeDnsMessage, encodeDnsQuery, ipToBytes,
} from './dns-wire.js';

export type DnsErrorCode = 'NXDOMAIN' | 'NODATA' | 'SERVFAIL' | 'TIMEOUT' | 'REFUSED' | 'FORMERR';

const EXPLAIN: Record<DnsErrorCode, string> = {
  NXDOMAIN: 'no such domain', NODATA: 'no record of that type', SERVFAIL: 'server failure',
  TIMEOUT: 'no answer from any DNS server', REFUSED: 'query refused', FORMERR: 'format error',
};

export class DnsError extends Error {
  /** NXDOMAIN and NODATA are facts about the domain; the rest may pass (try again later). */
  readonly temporary: boolean;
  /** From resolveSecure: the negative answer came with the resolver's AD bit (a DNSSEC-proven denial). */
  secure?: boolean;
  constructor(readonly code: DnsErrorCode, readonly hostname: string, readonly rrtype: string, detail?: string) {
    super(`DNS ${rrtype} lookup for ${hostname || '.'}: ${code} (${detail ?? EXPLAIN[code]})`);
    this.name = 'DnsError';
    this.temporary = code !== 'NXDOMAIN' && code !== 'NODATA';
  }
}

export interface DnsServerAddress { host: string; port: number }

/** `ip`, `ip:port`, `[v6]:port` or a bare IPv6 address; null when it is none of these. */
export function parseDnsServer(text: string): DnsServerAddress | null {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(text) ?? (net.isIPv6(text) ? [text, text] : /^([^:]+)(?::(\d+))?$/.exec(text));
  if (!m || !net.isIP(m[1].replace(/%.*$/, ''))) return null;
  const port = m[2] ? parseInt(m[2], 10) : 53;
  return port > 0 && port < 65536 ? { host: m[1], port } : null;
}

/** `nameserver` lines of resolv.conf; 127.0.0.1 when there are none, as the C library does. */
export function systemDnsServers(file = '/etc/resolv.conf'): DnsServerAddress[] {
  let text = '';
  try { text = fs.readFileSync(file, 'utf8'); } catch { /* no file: the default below */ }
  const servers = text.split('\n')
    .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
    .map((ip) => (ip && net.isIP(ip.replace(/%.*$/, '')) ? { host: ip, port: 53 } : null))
    .filter((s): s is DnsServerAddress => s !== null);
  return servers.length ? servers : [{ host: '127.0.0.1', port: 53 }];
}

/** `4.3.2.1` for 1.2.3.4, nibbles for IPv6: the labels of a PTR name or a DNSBL query (RFC 5782). */
export function reverseAddressLabels(ip: string): string {
  const b = ipToBytes(ip);
  if (b.length === 4) return Array.from(b).reverse().join('.');
  return Array.from(b).flatMap((x) => [x >> 4, x & 0xf]).reverse().map((n) => n.toString(16)).join('.');
}

export function ptrName(ip: string): string {
  return `${reverseAddressLabels(ip)}.${net.isIPv4(ip) ? 'in-addr.arpa' : 'ip6.arpa'}`;
}

export interface DnsResolverOptions {
  servers: DnsServerAddress[];
  /** Per query and server; then the next server is asked. */
  timeoutMs?: number;
  /** Floor and cap (seconds) for cached answers, and the cap for negative answers. */
  minTtl?: number;
  maxTtl?: number;
  maxNegativeTtl?: number;
  maxCacheEntries?: number;
}

interface CacheEntry { expires: number; records?: DnsRecord[]; error?: DnsError; secure?: boolean }

/** An answer and whether the validating resolver vouched for it (AD bit). */
export interface SecureAnswer<T extends DnsRecordType> { records: DnsRecordOf<T>[]; secure: boolean }

/** The UDP payload size we advertise (EDNS0): the 2020 DNS flag day's value, safe from fragmentation. */
const EDNS_SIZE = 1232;
const MAX_CNAME_CHAIN = 8;

export class DnsResolver {
  readonly servers: DnsServerAddress[];
  readonly timeoutMs: number;
  private readonly minTtl: number;
  private readonly maxTtl: number;
  private readonly maxNegativeTtl: number;
  private readonly maxCacheEntries: number;
  private readonly cache = new Map<string, CacheEntry>();
  /** Lookups on the wire now, by cache key: callers asking the same share one query. */
  private readonly inflight = new Map<string, Promise<{ records: DnsRecord[]; secure: boolean }>>();

  constructor(opts: DnsResolverOptions) {
    if (!opts.servers.length) throw new Error('DnsResolver needs at least one server');
    this.servers = opts.servers;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.minTtl = opts.minTtl ?? 1;
    this.maxTtl = opts.maxTtl ?? 86400;
    this.maxNegativeTtl = opts.maxNegativeTtl ?? 3600;
    this.maxCacheEntries = opts.maxCacheEntries ?? 10000;
  }

  static fromConfig(config: MainConfig): DnsResolver {
    const servers = config.list('dns_servers').map((s) => {
      const parsed = parseDnsServer(s);
      if (!parsed) throw new ConfigError(config.file, config.lineOf('dns_servers'), `dns_servers: "${s}" is not ip, ip:port or [ipv6]:port`);
      return parsed;
    });
    return new DnsResolver({ servers: servers.length ? servers : systemDnsServers(), timeoutMs: config.seconds('dns_timeout') * 1000 });
  }

  /** Records of `type` for `name`, after any CNAME chain (shared with the cache: do not modify); throws DnsError. */
  async resolve<T extends DnsRecordType>(name: string, type: T): Promise<DnsRecordOf<T>[]> {
    return (await this.answer(name, type, false)).records;
  }

  /**
   * As resolve, but asks with the DO and AD bits and reports whether the answer is
   * DNSSEC-secure. As Postfix (smtp_dns_support_level = dnssec), Postern validates
   * nothing itself: it trusts the AD bit of the resolver it is configured with, which
   * must be a validating resolver on a trusted path (loopback). A bogus answer comes
   * back from such a resolver as SERVFAIL (a temporary DnsError). A negative answer
   * throws a DnsError whose `secure` says whether the denial was validated.
   * Cached apart from resolve's answers.
   */
  resolveSecure<T extends DnsRecordType>(name: string, type: T): Promise<SecureAnswer<T>> {
    return this.answer(name, type, true);
  }

  /** The one path of resolve and resolveSecure: cache, then a query shared by everyone asking the same meanwhile. */
  private async answer<T extends DnsRecordType>(name: string, type: T, dnssec: boolean): Promise<SecureAnswer<T>> {
    const qname = name.trim().replace(/\.$/, '').toLowerCase();
    const key = cacheKey(qname, type, dnssec);
    const hit = this.cache.get(key);
    if (hit && hit.expires > Date.now()) {
      if (hit.error) throw hit.error;
      return { records: hit.records!.slice() as DnsRecordOf<T>[], secure: !!hit.secure };
    }
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.lookup(qname, type, dnssec).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    const a = await pending;
    return { records: a.records.slice() as DnsRecordOf<T>[], secure: a.secure };
  }

  async resolveA(name: string): Promise<string[]> { return (await this.resolve(name, 'A')).map((r) => r.data); }
  async resolveAAAA(name: string): Promise<string[]> { return (await this.resolve(name, 'AAAA')).map((r) => r.data); }
  async resolveMx(name: string): Promise<MxData[]> { return (await this.resolve(name, 'MX')).map((r) => ({ ...r.data })); }
  async resolveTxt(name: string): Promise<string[][]> { return (await this.resolve(name, 'TXT')).map((r) => [...r.data]); }
  async resolveCname(name: string): Promise<string[]> { return (await this.resolve(name, 'CNAME')).map((r) => r.data); }
  async resolvePtr(ip: string): Promise<string[]> {
    if (!net.isIP(ip)) throw new TypeError(`resolvePtr: "${ip}" is not an IP address`);
    return (await this.resolve(ptrName(ip), 'PTR')).map((r) => r.data);
  }

  /**
   * A resolver with node:dns.promises.resolve's result shapes and error codes
   * (ENOTFOUND, ENODATA, ETIMEOUT, ESERVFAIL, EREFUSED, EFORMERR), for mailauth's
   * `resolver` option, so SPF, DKIM, DMARC and ARC use this cache.
   */
  mailauthResolver(): (name: string, rrtype: string) => Promise<any> {
    return async (name: string, rrtype: string) => {
      const type = String(rrtype).toUpperCase();
      if (!(type in DNS_TYPES) || type === 'OPT') {
        throw Object.assign(new TypeError(`unsupported DNS record type ${rrtype}`), { code: 'ERR_INVALID_ARG_VALUE' });
      }
      try {
        const records: DnsRecord[] = await this.resolve(name, type as DnsRecordType);
        return records.map((r) => (r.type === 'MX' || r.type === 'SOA' ? { ...r.data } : r.type === 'TXT' ? [...r.data] : r.data));
      } catch (e) {
        if (!(e instanceof DnsError)) throw e;
        const code = e.code === 'NXDOMAIN' ? 'ENOTFOUND' : e.code === 'NODATA' ? 'ENODATA' : `E${e.code}`;
        const syscall = `query${type[0]}${type.slice(1).toLowerCase()}`;
        throw Object.assign(new Error(`${syscall} ${code} ${name}`), { code, syscall, hostname: name });
      }
    };
  }

  // ---------------------------------------------------------- lookup and cache

  private async lookup(name: string, type: DnsRecordType, dnssec = false): Promise<{ records: DnsRecord[]; secure: boolean }> {
    const key = cacheKey(name, type, dnssec);
    if (!validName(name)) {
      const e = new DnsError('NXDOMAIN', name, type, 'not a valid domain name');
      this.store(key, { error: e }, this.minTtl);
      throw e;
    }
    const reply = await this.ask(name, type, dnssec);
    const secure = dnssec && !!reply.ad;
    // Follow the CNAME chain inside the answer (a recursive server includes it).
    let owner = name;
    let ttl = Infinity;
    for (let hops = 0; hops <= MAX_CNAME_CHAIN; hops++) {
      const matches = reply.answers.filter((r) => r.type === type && r.name.toLowerCase() === owner);
      if (matches.length) {
        for (const r of matches) ttl = Math.min(ttl, r.ttl);
        this.store(key, { records: matches, secure }, clamp(ttl, this.minTtl, this.maxTtl));
        return { records: matches, secure };
      }
      const alias = reply.answers.find((r) => r.type === 'CNAME' && r.name.toLowerCase() === owner);
      if (!alias || type === 'CNAME') break;
      ttl = Math.min(ttl, alias.ttl);
      owner = (alias.data as string).toLowerCase();
    }
    const error = new DnsError(reply.rcode === DNS_RCODE.NXDOMAIN ? 'NXDOMAIN' : 'NODATA', name, type);
    if (dnssec) error.secure = secure;
    this.store(key, { error }, clamp(negativeTtl(reply, this.minTtl), this.minTtl, this.maxNegativeTtl));
    throw error;
  }

  private store(key: string, entry: Omit<CacheEntry, 'expires'>, ttlSeconds: number): void {
    if (this.cache.size >= this.maxCacheEntries) {
      const now = Date.now();
      for (const [k, v] of this.cache) if (v.expires <= now) this.cache.delete(k);
      // Still full: drop the oldest entries (a Map iterates in insertion order).
      for (const k of this.cache.keys()) {
        if (this.cache.size < this.maxCacheEntries) break;
        this.cache.delete(k);
      }
    }
    this.cache.delete(key);
    this.cache.set(key, { ...entry, expires: Date.now() + ttlSeconds * 1000 });
  }

  /** Ask each server in turn; an answer (positive or NXDOMAIN) ends the search, failures move on. */
  private async ask(name: string, type: DnsRecordType, dnssec = false): Promise<DnsMessage> {
    let last: DnsError | undefined;
    for (const server of this.servers) {
      try {
        let reply = await this.askServer(server, name, type, EDNS_SIZE, dnssec);
        // A server that does not know EDNS answers FORMERR without an OPT record (RFC 6891 7).
        if (reply.rcode === DNS_RCODE.FORMERR && !reply.additionals.some((r) => r.type === 'OPT')) {
          reply = await this.askServer(server, name, type, undefined);
        }
        if (reply.rcode === DNS_RCODE.NOERROR || reply.rcode === DNS_RCODE.NXDOMAIN) return reply;
        const code = reply.rcode === DNS_RCODE.REFUSED ? 'REFUSED' : reply.rcode === DNS_RCODE.FORMERR ? 'FORMERR' : 'SERVFAIL';
        last = new DnsError(code, name, type, `${EXPLAIN[code]} from ${serverText(server)}, rcode ${reply.rcode}`);
      } catch (e) {
        if (!(e instanceof DnsError)) throw e;
        last = e;
      }
    }
    throw last!;
  }

  private async askServer(server: DnsServerAddress, name: string, type: DnsRecordType, ednsSize: number | undefined,
    dnssec = false): Promise<DnsMessage> {
    const id = randomInt(65536);
    const query = encodeDnsQuery(id, name, type, ednsSize, dnssec && ednsSize !== undefined);
    const isReply = (m: DnsMessage) => m.qr && m.id === id && (m.questions.length === 0
      ? m.rcode !== DNS_RCODE.NOERROR && m.rcode !== DNS_RCODE.NXDOMAIN // some servers drop the question from error replies
      : m.questions.length === 1 && m.questions[0].name.toLowerCase() === name &&
        m.questions[0].type === DNS_TYPES[type] && m.questions[0].class === DNS_CLASS_IN);
    const udp = await this.exchangeUdp(server, query, id, isReply, name, type);
    if (udp !== 'truncated') return udp;
    return this.exchangeTcp(server, query, isReply, name, type);
  }

  private exchangeUdp(server: DnsServerAddress, query: Buffer, id: number, isReply: (m: DnsMessage) => boolean,
    name: string, type: string): Promise<DnsMessage | 'truncated'> {
    return new Promise((resolve, reject) => {
      // A fresh socket per query: the OS picks a random source port (spoofing defence).
      const sock = dgram.createSocket(net.isIPv6(server.host.replace(/%.*$/, '')) ? 'udp6' : 'udp4');
      let done = false;
      const finish = (fn: () => void) => { if (done) return; done = true; clearTimeout(timer); sock.close(); fn(); };
      const timer = setTimeout(() => finish(() => reject(new DnsError('TIMEOUT', name, type, `no answer from ${serverText(server)} within ${this.timeoutMs} ms`))), this.timeoutMs);
      sock.on('message', (buf) => {
        let m: DnsMessage;
        try { m = decodeDnsMessage(buf); } catch {
          // A truncated reply may be cut anywhere; its header still says so.
          if (buf.length >= 12 && buf.readUInt16BE(0) === id && (buf[2] & 0x82) === 0x82) finish(() => resolve('truncated'));
          return; // otherwise garbage: keep waiting for the real answer
        }
        if (!isReply(m)) return;
        finish(() => resolve(m.tc ? 'truncated' : m));
      });
      sock.on('error', (e: NodeJS.ErrnoException) =>
        finish(() => reject(new DnsError('TIMEOUT', name, type, `${serverText(server)} unreachable (${e.code ?? e.message})`))));
      // connect() makes the kernel drop datagrams from anyone but the server, and report ICMP errors.
      sock.connect(server.port, server.host, () => { if (!done) sock.send(query); });
    });
  }

  private exchangeTcp(server: DnsServerAddress, query: Buffer, isReply: (m: DnsMessage) => boolean,
    name: string, type: string): Promise<DnsMessage> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: server.host, port: server.port });
      let got = Buffer.alloc(0);
      const finish = (fn: () => void) => { clearTimeout(timer); sock.destroy(); fn(); };
      const fail = (why: string) => finish(() => reject(new DnsError('TIMEOUT', name, type, `TCP to ${serverText(server)}: ${why}`)));
      const timer = setTimeout(() => fail(`no answer within ${this.timeoutMs} ms`), this.timeoutMs);
      sock.on('connect', () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(query.length);
        sock.write(Buffer.concat([len, query]));
      });
      sock.on('data', (chunk) => {
        got = Buffer.concat([got, chunk]);
        if (got.length < 2 || got.length < 2 + got.readUInt16BE(0)) return;
        let m: DnsMessage;
        try { m = decodeDnsMessage(got.subarray(2, 2 + got.readUInt16BE(0))); } catch (e) { return fail((e as Error).message); }
        if (!isReply(m)) return fail('reply does not match the query');
        finish(() => resolve(m));
      });
      sock.on('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
      sock.on('end', () => fail('connection closed before the answer'));
    });
  }
}

/** DNSSEC answers are cached apart: a plain answer says nothing of the AD bit. */
function cacheKey(name: string, type: DnsRecordType, dnssec: boolean): string {
  return dnssec ? `${name}|${type}|dnssec` : `${name}|${type}`;
}

function clamp(v: number, lo: number, hi: number): number { return Math.min(Math.max(v, lo), hi); }

/** RFC 2308 5: the lesser of the SOA's own TTL and its minimum field; no SOA, no caching beyond the floor. */
function negativeTtl(reply: DnsMessage, floor: number): number {
  const soa = reply.authorities.find((r) => r.type === 'SOA');
  return soa && soa.type === 'SOA' ? Math.min(soa.ttl, soa.data.minttl) : floor;
}

function validName(name: string): boolean {
  if (name === '' || name.length > 253) return false;
  return name.split('.').every((l) => l.length > 0 && Buffer.byteLength(l) <= 63);
}

function serverText(s: DnsServerAddress): string {
  return net.isIPv6(s.host.replace(/%.*$/, '')) ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}

// ------------------------------------------------------------ one resolver per process

let shared: { key: string; resolver: DnsResolver } | undefined;

/** The process's resolver (and cache), replaced only when dns_servers or dns_timeout change. */
export function sharedResolver(config: MainConfig): DnsResolver {
  const key = `${config.get('dns_servers')}|${config.get('dns_timeout')}`;
  if (!shared || shared.key !== key) shared = { key, resolver: DnsResolver.fromConfig(config) };
  return shared.resolver;
}

// ------------------------------------------------------------ mail routing

export interface MailHost { name: string; priority: number; addresses: string[] }
export interface MailHosts { hosts: MailHost[]; nullMx: boolean }

/** A mail host with whether its address records validated (AD bit). */
export interface SecureMailHost extends MailHost { secure: boolean }
export interface SecureMailHosts { hosts: SecureMailHost[]; nullMx: boolean; /** The MX RRset (or its proven absence) validated. */ mxSecure: boolean }

/**
 * Where mail for `domain` goes (RFC 5321 5.1): MX hosts by preference, equal
 * preferences in random order; no MX means the domain itself (implicit MX);
 * a lone "." MX means the domain takes no mail (RFC 7505). Each host's IPv4
 * addresses come before its IPv6 ones. A host whose lookup fails is kept with
 * no addresses, so the caller moves to the next; when no host has an address
 * the lookup fails: temporary if any lookup was, else NODATA.
 *
 * With `dnssec` (smtp_dns_support_level = dnssec, for DANE, RFC 7672 2.2) every
 * lookup goes through resolveSecure and the answer also says whether the MX
 * answer and each host's address answers were DNSSEC-secure; a bogus answer is
 * a SERVFAIL: temporary.
 */
export function resolveMailHosts(resolver: DnsResolver, domain: string): Promise<MailHosts>;
export function resolveMailHosts(resolver: DnsResolver, domain: string, opts: { dnssec: true }): Promise<SecureMailHosts>;
export async function resolveMailHosts(resolver: DnsResolver, domain: string, opts: { dnssec?: boolean } = {}): Promise<MailHosts | SecureMailHosts> {
  const dnssec = opts.dnssec === true;
  const ask = <T extends DnsRecordType>(n: string, t: T): Promise<SecureAnswer<T>> =>
    (dnssec ? resolver.resolveSecure(n, t) : resolver.resolve(n, t).then((records) => ({ records, secure: false })));
  const name = domain.trim().replace(/\.$/, '').toLowerCase();
  let mx: MxData[];
  let mxSecure: boolean;
  try {
    const a = await ask(name, 'MX');
    mx = a.records.map((r) => ({ ...r.data }));
    mxSecure = a.secure;
  } catch (e) {
    if (!(e instanceof DnsError) || e.code !== 'NODATA') throw e;
    mx = [{ priority: 0, exchange: name }];
    mxSecure = !!e.secure;
  }
  if (mx.length === 1 && mx[0].exchange === '') return dnssec ? { hosts: [], nullMx: true, mxSecure } : { hosts: [], nullMx: true };
  const ordered = shuffleEqualPreferences(mx.filter((m) => m.exchange !== ''));

  const failures: DnsError[] = [];
  const addressesOf = async (host: string): Promise<{ addresses: string[]; secure: boolean }> => {
    const results = await Promise.allSettled([ask(host, 'A'), ask(host, 'AAAA')]);
    const found: string[] = [];
    let secure = true;
    for (const r of results) {
      if (r.status === 'fulfilled') {
        found.push(...r.value.records.map((x) => x.data));
        secure &&= r.value.secure;
      } else if (r.reason instanceof DnsError) {
        failures.push(r.reason);
        secure &&= !!r.reason.secure;
      } else throw r.reason;
    }
    return { addresses: found, secure };
  };
  const hosts = await Promise.all(ordered.map(async (m) => ({ name: m.exchange, priority: m.priority, ...(await addressesOf(m.exchange)) })));
  if (!hosts.some((h) => h.addresses.length)) {
    const temporary = failures.find((f) => f.temporary);
    if (temporary) throw temporary;
    throw new DnsError('NODATA', name, 'MX', `no address for ${hosts.map((h) => h.name).join(', ')}`);
  }
  if (dnssec) return { hosts, nullMx: false, mxSecure };
  return { hosts: hosts.map(({ secure: _, ...h }) => h), nullMx: false };
}

function shuffleEqualPreferences(mx: MxData[]): MxData[] {
  const out = [...mx].sort((a, b) => a.priority - b.priority);
  for (let start = 0; start < out.length;) {
    let end = start;
    while (end < out.length && out[end].priority === out[start].priority) end++;
    for (let i = end - 1; i > start; i--) { // Fisher-Yates within [start, end)
      const j = start + Math.floor(Math.random() * (i - start + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    start = end;
  }
  return out;
}
