/**
 * `postern dns check [DOMAIN...] [--json]`: asks the DNS what the world sees of
 * each local domain and compares it with this instance: MX, PTR (forward
 * confirmed), SPF, DKIM, DMARC, MTA-STS and TLS-RPT. Every lookup goes through
 * the instance's own resolver (`dns_servers`), so the answer is what Postern's
 * services see. Each finding says what is wrong and the exact record to publish.
 */
import * as net from 'node:net';
import * as os from 'node:os';
import { spf } from 'mailauth';
import { parsePolicy } from 'mailauth/lib/mta-sts';
import { Command } from 'commander';
import {
  MainConfig, ConfigError, DnsResolver, fetchStsPolicyText, stsMxMatches, DnsError, loadMasterCf, parseListenAddress, localDomains, checkDkimDomain, ptrName, ipToBytes,
} from '@postern/common';
import { dkimList, zoneFileRecord } from './dkim.js';

export type FindingLevel = 'error' | 'warning' | 'info' | 'ok';
export type CheckName = 'addresses' | 'mx' | 'ptr' | 'spf' | 'dkim' | 'dmarc' | 'mta-sts' | 'tls-rpt';

export interface Finding {
  level: FindingLevel;
  /** The mail domain; host-wide checks (addresses, ptr) name myhostname. */
  domain: string;
  check: CheckName;
  problem: string;
  /** Zone-file lines to publish (empty when there is nothing to publish, or the fix is not in the DNS). */
  records: string[];
}

export interface DnsCheckReport {
  hostname: string;
  /** Addresses mail may reach this host on (MX targets must be among them). */
  listen_addresses: string[];
  /** The addresses the world sees: PTR and SPF are checked for these. */
  public_addresses: string[];
  domains: string[];
  findings: Finding[];
  errors: number;
  warnings: number;
}

// ------------------------------------------------------------ this host's addresses

const ipKey = (ip: string): string => ipToBytes(ip).toString('hex');
const isWildcard = (host: string | undefined): boolean => !host || host === '*' || host === '0.0.0.0' || host === '::';
/** Never what the world sees: loopback and link-local. */
const isInternal = (ip: string): boolean => /^127\./.test(ip) || ip === '::1' || /^fe[89ab]/i.test(ip) || /^169\.254\./.test(ip);

export interface HostAddresses {
  listen: string[];
  public: string[];
  problems: Finding[];
}

/**
 * Where this host receives mail: the hosts of master.cf's MX-style smtpd
 * listeners (inet smtpd without wrapper mode or required TLS: an MX must take
 * plaintext mail, RFC 3207 4), every interface address for a wildcard
 * listener, and proxy_interfaces (Postfix: addresses reached through NAT or a
 * proxy). The public addresses are proxy_interfaces when set, else the
 * listeners' own addresses (a wildcard's without loopback and link-local).
 */
export function hostAddresses(config: MainConfig, configDir: string,
  interfaces: NodeJS.Dict<os.NetworkInterfaceInfo[]> = os.networkInterfaces()): HostAddresses {
  const hostname = config.get('myhostname');
  const proxies = config.list('proxy_interfaces').map((a) => {
    const ip = a.replace(/^\[(.*)\]$/, '$1');
    if (!net.isIP(ip)) throw new ConfigError(config.file, config.lineOf('proxy_interfaces'), `proxy_interfaces: "${a}" is not an IP address`);
    return ip;
  });
  const ifaceAddrs = Object.values(interfaces).flat().filter((i): i is os.NetworkInterfaceInfo => !!i).map((i) => i.address.replace(/%.*$/, ''));
  const listen: string[] = [];
  const own: string[] = [];
  let listeners = 0;
  for (const e of loadMasterCf(configDir)) {
    if (e.type !== 'inet' || e.command !== 'smtpd') continue;
    const o = config.withOverrides(e.overrides);
    if (o.bool('smtpd_tls_wrappermode') || o.get('smtpd_tls_security_level') === 'encrypt') continue;
    listeners++;
    const host = parseListenAddress(e.service)?.host;
    if (isWildcard(host)) {
      listen.push(...ifaceAddrs);
      own.push(...ifaceAddrs.filter((a) => !isInternal(a)));
    } else if (net.isIP(host!)) {
      listen.push(host!);
      own.push(host!);
    }
  }
  const uniq = (xs: string[]) => [...new Map(xs.map((x) => [ipKey(x), x])).values()];
  const problems: Finding[] = [];
  if (!listeners) {
    problems.push({ level: 'error', domain: hostname, check: 'addresses', records: [],
      problem: 'master.cf has no smtpd listener that takes mail without TLS wrapper mode or required TLS: nothing receives mail for an MX' });
  }
  const pub = uniq(proxies.length ? proxies : own);
  if (listeners && !pub.length) {
    problems.push({ level: 'error', domain: hostname, check: 'addresses', records: [],
      problem: 'no public address: the smtpd listeners are wildcards and this host has only loopback or link-local addresses; set proxy_interfaces to the address the world reaches it on' });
  }
  return { listen: uniq([...listen, ...proxies]), public: pub, problems };
}

// ------------------------------------------------------------ DNS helpers

type Lookup<T> = { value: T } | { missing: DnsError } | { failed: DnsError };

async function ask<T>(fn: () => Promise<T>): Promise<Lookup<T>> {
  try { return { value: await fn() }; } catch (e) {
    if (!(e instanceof DnsError)) throw e;
    return e.temporary ? { failed: e } : { missing: e };
  }
}

async function addressesOf(dns: DnsResolver, name: string): Promise<{ addresses: string[]; failed?: DnsError }> {
  const [a, aaaa] = await Promise.all([ask(() => dns.resolveA(name)), ask(() => dns.resolveAAAA(name))]);
  const addresses = [...('value' in a ? a.value : []), ...('value' in aaaa ? aaaa.value : [])];
  const failed = 'failed' in a ? a.failed : 'failed' in aaaa ? aaaa.failed : undefined;
  return { addresses, failed };
}

/** The TXT records of a name, each joined from its character-strings; [] when there are none. */
async function txtRecords(dns: DnsResolver, name: string): Promise<{ value: string[] } | { failed: DnsError }> {
  const r = await ask(() => dns.resolveTxt(name));
  if ('missing' in r) return { value: [] };
  if ('failed' in r) return r;
  return { value: r.value.map((parts) => parts.join('')) };
}

/** `tag=value; ...` (DKIM, DMARC, MTA-STS, TLS-RPT share this shape), or why it does not parse. */
export function parseTags(text: string): { tags: [string, string][] } | { error: string } {
  const tags: [string, string][] = [];
  for (const part of text.split(';')) {
    if (!part.trim()) continue;
    const m = /^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/s.exec(part);
    if (!m) return { error: `"${part.trim().slice(0, 40)}" is not tag=value` };
    tags.push([m[1].toLowerCase(), m[2]]);
  }
  return { tags };
}

const addressRecord = (name: string, ip: string) => `${name}. IN ${net.isIPv6(ip) ? 'AAAA' : 'A'} ${ip}`;
const mxRecord = (domain: string, host: string) => `${domain}. IN MX 10 ${host}.`;
const spfMechanism = (ip: string) => `${net.isIPv6(ip) ? 'ip6' : 'ip4'}:${ip}`;

export function dmarcSuggestion(domain: string): string {
  return zoneFileRecord(`_dmarc.${domain}`, `v=DMARC1; p=none; rua=mailto:postmaster@${domain}`);
}

// ------------------------------------------------------------ the checks

interface Ctx {
  config: MainConfig;
  dns: DnsResolver;
  hostname: string;
  host: HostAddresses;
  ours: Set<string>;
  add: (f: Finding) => void;
}

/** The domain's MX addresses that are ours, and the names through which mail reaches them (an MX host, or the domain itself for an implicit MX). */
interface MxOurs { addresses: string[]; hosts: string[] }

/** MX: some MX host resolves to an address this host listens on. */
async function checkMx(c: Ctx, domain: string): Promise<MxOurs> {
  const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain, check: 'mx', problem, records });
  const toUs = mxRecord(domain, c.hostname);
  const mx = await ask(() => c.dns.resolveMx(domain));
  if ('failed' in mx) { f('error', `MX lookup failed: ${mx.failed.message}`); return { addresses: [], hosts: [] }; }
  if ('missing' in mx) {
    const implicit = await addressesOf(c.dns, domain);
    const mine = implicit.addresses.filter((a) => c.ours.has(ipKey(a)));
    if (mine.length) {
      f('warning', `no MX record: mail reaches this host only through ${domain}'s own address (implicit MX, ${mine.join(', ')})`, [toUs]);
      return { addresses: mine, hosts: [domain] };
    }
    f('error', `no MX record: mail for ${domain} cannot reach this host`, [toUs]);
    return { addresses: [], hosts: [] };
  }
  if (mx.value.length === 1 && mx.value[0].exchange === '') {
    f('error', `null MX ("0 ."): ${domain} says it takes no mail (RFC 7505)`, [toUs]);
    return { addresses: [], hosts: [] };
  }
  const hosts = [...mx.value].sort((a, b) => a.priority - b.priority);
  const resolved = await Promise.all(hosts.map(async (h) => ({ ...h, ...(await addressesOf(c.dns, h.exchange)) })));
  const ours = resolved.filter((h) => h.addresses.some((a) => c.ours.has(ipKey(a))));
  const oursAddrs = ours.flatMap((h) => h.addresses.filter((a) => c.ours.has(ipKey(a))));
  for (const h of resolved) {
    if (h.failed && !h.addresses.length) f('error', `address lookup of MX host ${h.exchange} failed: ${h.failed.message}`);
    else if (!h.addresses.length) {
      f(ours.length ? 'warning' : 'error', `MX host ${h.exchange} has no address (A/AAAA)`, c.host.public.map((a) => addressRecord(h.exchange, a)));
    } else if (ours.includes(h)) {
      f('ok', `MX ${h.priority} ${h.exchange} is this host (${h.addresses.filter((a) => c.ours.has(ipKey(a))).join(', ')})`);
    } else if (ours.length) {
      f('info', `MX ${h.priority} ${h.exchange} (${h.addresses.join(', ')}) is another host (a backup MX?)`);
    }
  }
  const foreign = resolved.filter((h) => h.addresses.length && !ours.includes(h));
  if (!ours.length && foreign.length) {
    f('error', `MX ${foreign.map((h) => `${h.exchange} (${h.addresses.join(', ')})`).join(', ')} is not an address this host listens on (${c.host.listen.join(', ') || 'none'})`, [toUs]);
  }
  return { addresses: oursAddrs, hosts: ours.map((h) => h.exchange.toLowerCase().replace(/\.$/, '')) };
}

/** PTR of each public address names myhostname, and myhostname resolves back to the address (FCrDNS). */
async function checkPtr(c: Ctx): Promise<void> {
  const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain: c.hostname, check: 'ptr', problem, records });
  const forward = await addressesOf(c.dns, c.hostname);
  for (const ip of c.host.public) {
    const ptrRecord = `${ptrName(ip)}. IN PTR ${c.hostname}.`;
    const ptr = await ask(() => c.dns.resolvePtr(ip));
    if ('failed' in ptr) { f('error', `PTR lookup of ${ip} failed: ${ptr.failed.message}`); continue; }
    if ('missing' in ptr) { f('error', `no PTR record for ${ip} (receivers distrust an address without a name; set it at the address's provider)`, [ptrRecord]); continue; }
    const names = ptr.value.map((n) => n.toLowerCase().replace(/\.$/, ''));
    if (!names.includes(c.hostname)) {
      f('error', `PTR of ${ip} names ${names.join(', ')}, not myhostname ${c.hostname}`, [ptrRecord]);
      continue;
    }
    if (forward.failed && !forward.addresses.length) { f('error', `address lookup of ${c.hostname} failed: ${forward.failed.message}`); continue; }
    if (!forward.addresses.some((a) => ipKey(a) === ipKey(ip))) {
      f('error', `PTR of ${ip} names ${c.hostname}, but ${c.hostname} resolves to ${forward.addresses.join(', ') || 'no address'}, not back to ${ip} (not forward-confirmed)`,
        [addressRecord(c.hostname, ip)]);
      continue;
    }
    f('ok', `${ip} has PTR ${c.hostname}, which resolves back to it`);
  }
}

/** SPF (mailauth's evaluator over our resolver): would each public address pass for postmaster@DOMAIN? */
async function checkSpf(c: Ctx, domain: string, mxOurs: string[]): Promise<void> {
  const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain, check: 'spf', problem, records });
  if (!c.host.public.length) return;
  const resolver = c.dns.mailauthResolver();
  const results = await Promise.all(c.host.public.map(async (ip) => {
    const r = await spf({ sender: `postmaster@${domain}`, ip, helo: c.hostname, mta: c.hostname, resolver: resolver as any });
    const st = r.status as { result: string; comment?: string };
    return { ip, result: st.result, comment: st.comment || '' };
  }));
  const failing = results.filter((r) => r.result !== 'pass');
  if (!failing.length) { f('ok', `SPF authorises ${results.map((r) => r.ip).join(', ')}`); return; }
  const txt = await txtRecords(c.dns, domain);
  const current = 'value' in txt ? txt.value.filter((t) => /^v=spf1(\s|$)/i.test(t)) : [];
  if (failing.every((r) => r.result === 'none') && !current.length) {
    // `mx` is the simplest correct record when the MX already names this host's every public address
    const mxCovers = c.host.public.every((ip) => mxOurs.some((a) => ipKey(a) === ipKey(ip)));
    const value = mxCovers ? 'v=spf1 mx -all' : `v=spf1 ${c.host.public.map(spfMechanism).join(' ')} -all`;
    f('error', 'no SPF record: receivers cannot tell mail from this host from forgeries', [zoneFileRecord(domain, value)]);
    return;
  }
  if (current.length > 1) {
    f('error', `${current.length} SPF records (a permanent error for every receiver): publish exactly one`,
      [zoneFileRecord(domain, current[0].replace(/^v=spf1/i, `v=spf1 ${failing.map((r) => spfMechanism(r.ip)).join(' ')}`))]);
    return;
  }
  const temp = failing.find((r) => r.result === 'temperror');
  if (temp) { f('error', `SPF evaluation failed temporarily for ${temp.ip}: ${temp.comment}`); return; }
  const perm = failing.find((r) => r.result === 'permerror');
  if (perm) { f('error', `the SPF record is broken (permerror): ${perm.comment}`); return; }
  const amended = current[0].replace(/^v=spf1/i, `v=spf1 ${failing.map((r) => spfMechanism(r.ip)).join(' ')}`);
  f('error', `SPF does not authorise ${failing.map((r) => `${r.ip} (${r.result})`).join(', ')}`, [zoneFileRecord(domain, amended)]);
}

/** DKIM: each signing-table key of the domain is published, with the same public key. */
async function checkDkim(c: Ctx, domain: string, rows: ReturnType<typeof dkimList>['rows']): Promise<void> {
  const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain, check: 'dkim', problem, records });
  const mine = rows.filter((r) => r.domain === domain);
  if (!mine.length) { f('warning', `no DKIM key for ${domain} in dkim_signing_table: its mail goes unsigned (postern dkim keygen ${domain})`); return; }
  for (const row of mine) {
    if (!row.txt) { f('error', `selector ${row.selector}: ${row.key_file}: ${row.status}`); continue; }
    const want = zoneFileRecord(row.dns_name, row.txt);
    const wantTags = new Map((parseTags(row.txt) as { tags: [string, string][] }).tags);
    const txt = await txtRecords(c.dns, row.dns_name);
    if ('failed' in txt) { f('error', `TXT lookup of ${row.dns_name} failed: ${txt.failed.message}`); continue; }
    const keys = txt.value.map((t) => ({ text: t, parsed: parseTags(t) }))
      .filter((k) => 'tags' in k.parsed && k.parsed.tags.some(([n]) => n === 'p'));
    if (!keys.length) { f('error', `no DKIM record at ${row.dns_name}: receivers cannot verify mail signed with selector ${row.selector}`, [want]); continue; }
    const matches = keys.some((k) => {
      const tags = new Map((k.parsed as { tags: [string, string][] }).tags);
      return (tags.get('k') ?? 'rsa').toLowerCase() === wantTags.get('k') && (tags.get('p') ?? '').replace(/\s+/g, '') === wantTags.get('p');
    });
    if (!matches) {
      const empty = keys.every((k) => !new Map((k.parsed as { tags: [string, string][] }).tags).get('p'));
      f('error', empty ? `the DKIM record at ${row.dns_name} is revoked (empty p=), but ${row.key_file} still signs with it`
        : `the DKIM record at ${row.dns_name} does not match the private key ${row.key_file}: signatures fail`, [want]);
      continue;
    }
    f('ok', `selector ${row.selector}: the published key matches ${row.key_file}`);
  }
}

/** Why a DMARC record (RFC 7489 6.3) is unusable, or null. */
export function dmarcProblem(text: string): string | null {
  const parsed = parseTags(text);
  if ('error' in parsed) return parsed.error;
  const tags = parsed.tags;
  if (!tags.length || tags[0][0] !== 'v' || tags[0][1] !== 'DMARC1') return 'it must begin with v=DMARC1';
  const t = new Map(tags);
  const policy = /^(none|quarantine|reject)$/;
  if (!t.has('p')) return 'the p= tag (none, quarantine or reject) is missing';
  if (!policy.test(t.get('p')!.toLowerCase())) return `p=${t.get('p')} is not none, quarantine or reject`;
  if (t.has('sp') && !policy.test(t.get('sp')!.toLowerCase())) return `sp=${t.get('sp')} is not none, quarantine or reject`;
  for (const k of ['adkim', 'aspf']) if (t.has(k) && !/^[rs]$/i.test(t.get(k)!)) return `${k}=${t.get(k)} is not r or s`;
  if (t.has('pct') && !(/^\d{1,3}$/.test(t.get('pct')!) && parseInt(t.get('pct')!, 10) <= 100)) return `pct=${t.get('pct')} is not 0 to 100`;
  for (const k of ['rua', 'ruf']) {
    for (const uri of (t.get(k) ?? '').split(',').filter((u) => u.trim())) {
      if (!/^\s*(mailto:[^\s@]+@[^\s@]+|https?:\/\/\S+)\s*$/i.test(uri)) return `${k}: "${uri.trim()}" is not a mailto: or https: URI`;
    }
  }
  return null;
}

async function checkDmarc(c: Ctx, domain: string): Promise<void> {
  const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain, check: 'dmarc', problem, records });
  const want = dmarcSuggestion(domain);
  const name = `_dmarc.${domain}`;
  const txt = await txtRecords(c.dns, name);
  if ('failed' in txt) { f('error', `TXT lookup of ${name} failed: ${txt.failed.message}`); return; }
  // RFC 7489 6.6.3: records that do not start with v=DMARC1 are not DMARC records
  const recs = txt.value.filter((t) => /^\s*v\s*=\s*DMARC1\s*(;|$)/.test(t));
  if (recs.length > 1) { f('error', `${recs.length} DMARC records at ${name}: receivers ignore them all; publish exactly one`, [want]); return; }
  if (recs.length === 1) {
    const why = dmarcProblem(recs[0]);
    if (why) { f('error', `the DMARC record does not parse: ${why}`, [want]); return; }
    f('ok', `DMARC policy ${recs[0]}`);
    return;
  }
  // no record of its own: the organisational domain's applies (parents down to two labels, without a public suffix list)
  const labels = domain.split('.');
  for (let i = 1; labels.length - i >= 2; i++) {
    const parent = labels.slice(i).join('.');
    const p = await txtRecords(c.dns, `_dmarc.${parent}`);
    const found = 'value' in p ? p.value.filter((t) => /^\s*v\s*=\s*DMARC1\s*(;|$)/.test(t)) : [];
    if (found.length === 1 && !dmarcProblem(found[0])) {
      f('info', `no DMARC record at ${name}; the policy of _dmarc.${parent} applies`, [want]);
      return;
    }
  }
  const stray = txt.value.find((t) => /dmarc/i.test(t));
  f('error', stray ? `the TXT record at ${name} does not begin with v=DMARC1: "${stray.slice(0, 60)}"` : `no DMARC record at ${name}`, [want]);
}

/**
 * MTA-STS (RFC 8461 3.1) and TLS-RPT (RFC 8460 3): checked when published, suggested when not.
 * A published STSv1 record must have its policy behind it, and that policy's mx: lines must
 * name the MX hosts through which mail reaches this host (`mxHosts`): senders that apply it
 * deliver to no other.
 */
async function checkStsAndTlsRpt(c: Ctx, domain: string, now: Date, mxHosts: string[]): Promise<void> {
  const sts = `_mta-sts.${domain}`;
  const stsId = now.toISOString().replace(/[^0-9]/g, '').slice(0, 14);
  const stsWant = zoneFileRecord(sts, `v=STSv1; id=${stsId}`);
  const rpt = `_smtp._tls.${domain}`;
  const rptWant = zoneFileRecord(rpt, `v=TLSRPTv1; rua=mailto:postmaster@${domain}`);
  const check = async (check: CheckName, name: string, version: string, want: string, absent: string, problemOf: (tags: Map<string, string>) => string | null) => {
    const f = (level: FindingLevel, problem: string, records: string[] = []) => c.add({ level, domain, check, problem, records });
    const txt = await txtRecords(c.dns, name);
    if ('failed' in txt) { f('error', `TXT lookup of ${name} failed: ${txt.failed.message}`); return; }
    const recs = txt.value.filter((t) => new RegExp(`^\\s*v\\s*=\\s*${version}\\s*(;|$)`).test(t));
    if (!recs.length) { f('info', absent, [want]); return; }
    if (recs.length > 1) { f('error', `${recs.length} ${version} records at ${name}: receivers ignore them all; publish exactly one`, [want]); return; }
    const parsed = parseTags(recs[0]);
    const why = 'error' in parsed ? parsed.error : parsed.tags[0][0] !== 'v' ? `it must begin with v=${version}` : problemOf(new Map(parsed.tags));
    if (why) { f('error', `the ${version} record at ${name} does not parse: ${why}`, [want]); return; }
    if (check === 'mta-sts') { await checkStsPolicy(recs[0], f); return; }
    f('ok', `${recs[0]}`);
  };
  const checkStsPolicy = async (txt: string, f: (level: FindingLevel, problem: string, records?: string[]) => void) => {
    const url = `https://mta-sts.${domain}/.well-known/mta-sts.txt`;
    const example = `version: STSv1, mode: testing, mx: ${mxHosts[0] ?? c.hostname}, max_age: 604800, one a line`;
    let text: string;
    try { text = await fetchStsPolicyText(domain, c.config, c.dns); } catch (e) {
      f('error', `${sts} is published, but its policy cannot be fetched (${(e as Error).message}): serve a policy there (${example}) or remove the record`);
      return;
    }
    let policy: { mode: string; mx?: string[] };
    try { policy = parsePolicy(text) as any; } catch (e) {
      f('error', `the MTA-STS policy at ${url} does not parse: ${(e as Error).message} (${example}); then publish a new id`, [stsWant]);
      return;
    }
    const patterns = policy.mx ?? [];
    if (policy.mode === 'none') { f('info', `${txt}; policy mode none: senders apply no MTA-STS`); return; }
    const uncovered = mxHosts.filter((h) => !stsMxMatches(h, patterns));
    if (uncovered.length) {
      f(policy.mode === 'enforce' ? 'error' : 'warning', `the MTA-STS policy at ${url} (mode ${policy.mode}, mx: ${patterns.join(', ')}) `
        + `does not name MX ${uncovered.join(', ')}: ${policy.mode === 'enforce' ? 'senders that apply it will not deliver here' : 'senders report failures, and will not deliver here once the mode is enforce'}; `
        + `${uncovered.map((h) => `add "mx: ${h}"`).join(', ')} to the policy, then publish a new id`, [stsWant]);
      return;
    }
    f('ok', `${txt}; policy mode ${policy.mode} covers MX ${mxHosts.join(', ') || '(none of ours)'}`);
  };
  await check('mta-sts', sts, 'STSv1', stsWant,
    `no MTA-STS record at ${sts} (optional; it needs a policy at https://mta-sts.${domain}/.well-known/mta-sts.txt too)`,
    (t) => (!t.has('id') ? 'the id= tag is missing' : /^[A-Za-z0-9]{1,32}$/.test(t.get('id')!) ? null : `id=${t.get('id')} is not 1 to 32 letters and digits`));
  await check('tls-rpt', rpt, 'TLSRPTv1', rptWant, `no TLS-RPT record at ${rpt} (optional: where senders report TLS failures)`, (t) => {
    if (!t.has('rua')) return 'the rua= tag is missing';
    for (const uri of t.get('rua')!.split(',')) {
      if (!/^\s*(mailto:[^\s@]+@[^\s@]+|https:\/\/\S+)\s*$/i.test(uri)) return `rua: "${uri.trim()}" is not a mailto: or https: URI`;
    }
    return null;
  });
}

// ------------------------------------------------------------ the command

/** The domains to check: those named, else every local domain except localhost names and myhostname (its PTR check covers it). */
export function domainsToCheck(config: MainConfig, named: string[]): string[] {
  if (named.length) {
    return named.map((d) => {
      const domain = d.toLowerCase().replace(/\.$/, '');
      const bad = checkDkimDomain(domain);
      if (bad) throw new Error(bad);
      return domain;
    });
  }
  const hostname = config.get('myhostname').toLowerCase();
  const domains = [...localDomains(config)].filter((d) => d !== hostname && d !== 'localhost' && !d.startsWith('localhost.'));
  if (!domains.length) throw new Error('no local domains to check (mydestination, virtual_mailbox_domains): name one');
  return domains;
}

export async function dnsCheck(configDir: string, named: string[], now = new Date()): Promise<DnsCheckReport> {
  const config = MainConfig.load(configDir);
  const domains = domainsToCheck(config, named);
  const hostname = config.get('myhostname').toLowerCase().replace(/\.$/, '');
  const host = hostAddresses(config, configDir);
  const findings: Finding[] = [...host.problems];
  const c: Ctx = {
    config, dns: DnsResolver.fromConfig(config), hostname, host,
    ours: new Set(host.listen.map(ipKey)), add: (f) => findings.push(f),
  };
  const dkim = dkimList(config);
  for (const err of dkim.errors) findings.push({ level: 'warning', domain: hostname, check: 'dkim', problem: `${err} (line ignored)`, records: [] });
  await checkPtr(c);
  for (const domain of domains) {
    const mxOurs = await checkMx(c, domain);
    await checkSpf(c, domain, mxOurs.addresses);
    await checkDkim(c, domain, dkim.rows);
    await checkDmarc(c, domain);
    await checkStsAndTlsRpt(c, domain, now, mxOurs.hosts);
  }
  return {
    hostname, listen_addresses: host.listen, public_addresses: host.public, domains, findings,
    errors: findings.filter((f) => f.level === 'error').length, warnings: findings.filter((f) => f.level === 'warning').length,
  };
}

/** One line: level, domain, check, what is wrong, the records to publish. */
export function formatFinding(f: Finding): string {
  return `${f.level.padEnd(7)} ${f.domain} ${f.check}: ${f.problem}${f.records.length ? `; publish: ${f.records.join(' ; ')}` : ''}`;
}

export function addDnsCommands(program: Command, configDir: () => string, setExit: (code: number) => void): void {
  const dns = program.command('dns').description('DNS records of the mail domains');
  dns.command('check [domain...]').description('compare what the DNS says about each local domain with this instance; print what to publish')
    .option('--json', 'one JSON object: addresses, findings [{level, domain, check, problem, records}], counts')
    .action(async (named: string[], o) => {
      const report = await dnsCheck(configDir(), named ?? []);
      if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
      else {
        for (const f of report.findings) process.stdout.write(formatFinding(f) + '\n');
        process.stderr.write(`postern: dns check: ${report.errors} error(s), ${report.warnings} warning(s)\n`);
      }
      setExit(report.errors ? 1 : 0);
    });
}
