/**
 * Postfix-style restriction lists. At each RCPT, smtpd evaluates
 * smtpd_client_restrictions, smtpd_helo_restrictions,
 * smtpd_sender_restrictions, smtpd_relay_restrictions and
 * smtpd_recipient_restrictions in that order (Postfix's default
 * smtpd_delay_reject = yes): within a list the first decisive result wins, a
 * `permit` ends only its own list, a reject ends the evaluation. Evaluating at
 * RCPT rather than at connect lets permit_sasl_authenticated and the sender
 * checks work in any list, and puts the envelope into the reject log line;
 * the client's reverse DNS is still looked up once per connection: when it
 * connects (a client outside mynetworks), or when a restriction first needs it.
 *
 * A DNS failure never turns into a permanent reject: the reverse-DNS and
 * sender-domain checks answer 450, a DNS list that does not answer is skipped
 * with a warning (mail must not stop because a blocklist is down).
 */
import * as net from 'node:net';
import {
  MainConfig, NetworkList, DnsResolver, DnsError, Restriction, RESTRICTION_LISTS, RestrictionListName,
  parseRestrictionList, rejectCode, parseAddressPattern, reverseAddressLabels, splitAddress, ipToBytes,
} from '@postern/common';

// ------------------------------------------------------------ the client's name

export interface ClientIdentity {
  address: string;
  /** Forward-confirmed name (PTR, then A/AAAA back to the address), else 'unknown'. */
  name: string;
  /** The PTR name as found (first valid one), else 'unknown'. */
  reverseName: string;
  /** PTR lookup: a valid name found, none (no PTR, or only malformed ones), or a DNS failure. */
  reverse: 'found' | 'none' | 'temporary';
  /** Forward confirmation of the PTR name(s). */
  forward: 'confirmed' | 'unconfirmed' | 'temporary';
  /** Why a lookup failed temporarily, for the log. */
  dnsError?: string;
}

/** At most this many PTR names are tried for forward confirmation. */
const MAX_PTR_NAMES = 3;

/**
 * Postfix's valid_hostname: letters, digits, `-` and `_`, labels of 1-63
 * characters that do not start or end with `-`, at most 255 in all, and not
 * all-numeric (that would be an address written without brackets).
 */
export function validHostname(name: string): boolean {
  const n = name.replace(/\.$/, '');
  if (!n || n.length > 255) return false;
  const labels = n.split('.');
  if (!labels.every((l) => /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i.test(l))) return false;
  return !labels.every((l) => /^\d+$/.test(l));
}

/** `[1.2.3.4]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3). */
export function validAddressLiteral(text: string): boolean {
  const m = /^\[(?:IPv6:([^\]]+)|([\d.]+))\]$/i.exec(text);
  return !!m && (m[1] ? net.isIPv6(m[1]) : net.isIPv4(m[2]));
}

function sameAddress(a: string, b: string): boolean {
  try { return ipToBytes(a).equals(ipToBytes(b)); } catch { return false; }
}

/** PTR, then forward confirmation (FCrDNS); DNS failures are recorded, never thrown. */
export async function lookupClientIdentity(resolver: DnsResolver, address: string): Promise<ClientIdentity> {
  const unknown = { address, name: 'unknown', reverseName: 'unknown' };
  let ptrs: string[];
  try {
    ptrs = await resolver.resolvePtr(address);
  } catch (e) {
    if (!(e instanceof DnsError)) throw e;
    if (e.temporary) return { ...unknown, reverse: 'temporary', forward: 'temporary', dnsError: e.message };
    return { ...unknown, reverse: 'none', forward: 'unconfirmed' };
  }
  // a PTR record is written by whoever owns the address: only a proper host name is used
  const names = ptrs.map((n) => n.toLowerCase().replace(/\.$/, '')).filter(validHostname).slice(0, MAX_PTR_NAMES);
  if (!names.length) return { ...unknown, reverse: 'none', forward: 'unconfirmed' };
  const family = net.isIPv6(address) ? 'AAAA' : 'A';
  let temporary: string | undefined;
  for (const name of names) {
    try {
      const addrs = family === 'A' ? await resolver.resolveA(name) : await resolver.resolveAAAA(name);
      if (addrs.some((a) => sameAddress(a, address))) return { address, name, reverseName: names[0], reverse: 'found', forward: 'confirmed' };
    } catch (e) {
      if (!(e instanceof DnsError)) throw e;
      if (e.temporary) temporary ??= e.message;
    }
  }
  return { ...unknown, reverseName: names[0], reverse: 'found', ...(temporary ? { forward: 'temporary', dnsError: temporary } : { forward: 'unconfirmed' }) };
}

/** One connection's client: its name is looked up once and kept for the session. */
export class SessionClient {
  identity?: ClientIdentity;
  private pending?: Promise<ClientIdentity>;

  constructor(readonly address: string, private readonly resolver: DnsResolver) {}

  lookup(): Promise<ClientIdentity> {
    this.pending ??= lookupClientIdentity(this.resolver, this.address).then((id) => (this.identity = id));
    return this.pending;
  }

  /** The verified name, or 'unknown' (also before the lookup). */
  get name(): string { return this.identity?.name ?? 'unknown'; }
  /** `name[address]`, as in Postfix's logs. */
  get label(): string { return `${this.name}[${this.address}]`; }
}

// ------------------------------------------------------------ the lists

export interface RestrictionPolicy {
  lists: Record<RestrictionListName, Restriction[]>;
  rejectUnlisted: boolean;
  unknownClientCode: number;
  unknownReverseCode: number;
  mynetworks: NetworkList;
  /** Our domains; a table behind them may answer later or fail (TableUnavailable). */
  localDomains: DomainSet;
}

/** A Set of names, or common's LocalDomains (names and tables). */
export interface DomainSet { has(domain: string): boolean | Promise<boolean> }

/** The reply when a table could not answer: Postfix's, never a 5xx. */
const lookupFailure = (recipient: string): Rejection => reject(451, '4.3.0', `<${recipient}>: Temporary lookup failure`);

/** Reads the lists; a bad one throws ConfigError naming main.cf and the line. */
export function restrictionPolicy(config: MainConfig, mynetworks: NetworkList, localDomains: DomainSet): RestrictionPolicy {
  const lists = Object.fromEntries(RESTRICTION_LISTS.map((n) => [n, parseRestrictionList(config, n)])) as Record<RestrictionListName, Restriction[]>;
  return {
    lists,
    rejectUnlisted: config.bool('smtpd_reject_unlisted_recipient'),
    unknownClientCode: rejectCode(config, 'unknown_client_reject_code'),
    unknownReverseCode: rejectCode(config, 'unknown_reverse_client_reject_code'),
    mynetworks,
    localDomains,
  };
}

export interface RecipientRequest {
  client: SessionClient;
  /** The HELO/EHLO name ('' when none was given). */
  helo: string;
  /** MAIL FROM address ('' for the null sender). */
  sender: string;
  recipient: string;
  authenticated: boolean;
}

export interface CheckEnvironment {
  resolver: DnsResolver;
  /** Does this address in one of our domains have a mailbox? Rejects when a table cannot answer (TableUnavailable). */
  knownRecipient(address: string): boolean | Promise<boolean>;
  /** A check that could not be made (a DNS list did not answer). */
  warn(fields: Record<string, unknown>, message: string): void;
}

export interface Rejection { code: number; enhanced: string; text: string }

type Result = 'permit' | Rejection | null;

/** The reply to one RCPT: a rejection, or null to accept the recipient. */
export async function checkRecipient(policy: RestrictionPolicy, env: CheckEnvironment, req: RecipientRequest): Promise<Rejection | null> {
  const r = await checkRecipientNamed(policy, env, req);
  return r && r.rejection;
}

/** The same, with the name of the restriction that rejected (for the log line and the metrics). */
export async function checkRecipientNamed(policy: RestrictionPolicy, env: CheckEnvironment, req: RecipientRequest):
  Promise<{ rejection: Rejection; restriction: string } | null> {
  for (const list of RESTRICTION_LISTS) {
    for (const r of policy.lists[list]) {
      const result = await evaluate(r, list, policy, env, req);
      if (result === 'permit') break;
      if (result) return { rejection: result, restriction: r.name };
    }
  }
  if (policy.rejectUnlisted) {
    const result = await unlistedRecipient(policy, env, req.recipient);
    if (result) return { rejection: result, restriction: 'reject_unlisted_recipient' };
  }
  return null;
}

function reject(code: number, enhanced: string, text: string): Rejection {
  return { code, enhanced, text };
}

/** What `reject` says in each list, as Postfix words it. */
function accessDenied(list: RestrictionListName, req: RecipientRequest): Rejection {
  const what: Record<RestrictionListName, string> = {
    smtpd_client_restrictions: `<${req.client.label}>: Client host rejected`,
    smtpd_helo_restrictions: `<${req.helo}>: Helo command rejected`,
    smtpd_sender_restrictions: `<${req.sender}>: Sender address rejected`,
    smtpd_relay_restrictions: `<${req.recipient}>: Recipient address rejected`,
    smtpd_recipient_restrictions: `<${req.recipient}>: Recipient address rejected`,
  };
  return reject(554, '5.7.1', `${what[list]}: Access denied`);
}

async function evaluate(r: Restriction, list: RestrictionListName, policy: RestrictionPolicy,
  env: CheckEnvironment, req: RecipientRequest): Promise<Result> {
  const ip = req.client.address;
  switch (r.name) {
    case 'permit': return 'permit';
    case 'reject': return accessDenied(list, req);
    case 'permit_mynetworks': return policy.mynetworks.contains(ip) ? 'permit' : null;
    case 'permit_sasl_authenticated': return req.authenticated ? 'permit' : null;

    case 'reject_unauth_destination': {
      let ours: boolean;
      try { ours = await policy.localDomains.has(splitAddress(req.recipient).domain); } catch { return lookupFailure(req.recipient); }
      return ours ? null : reject(554, '5.7.1', `<${req.recipient}>: Relay access denied`);
    }
    case 'reject_unlisted_recipient':
      return unlistedRecipient(policy, env, req.recipient);

    case 'reject_unknown_reverse_client_hostname': {
      const id = await req.client.lookup();
      if (id.reverse === 'found') return null;
      const code = id.reverse === 'temporary' ? 450 : policy.unknownReverseCode;
      return reject(code, `${String(code)[0]}.7.25`, `Client host rejected: cannot find your reverse hostname, [${ip}]`);
    }
    case 'reject_unknown_client_hostname': {
      const id = await req.client.lookup();
      if (id.forward === 'confirmed') return null;
      const code = id.forward === 'temporary' || id.reverse === 'temporary' ? 450 : policy.unknownClientCode;
      return reject(code, `${String(code)[0]}.7.25`, `Client host rejected: cannot find your hostname, [${ip}]`);
    }

    case 'reject_invalid_helo_hostname':
      if (!req.helo || validHostname(req.helo) || validAddressLiteral(req.helo) || net.isIP(req.helo)) return null;
      return reject(501, '5.5.2', `<${req.helo}>: Helo command rejected: Invalid name`);
    case 'reject_non_fqdn_helo_hostname':
      if (!req.helo || validAddressLiteral(req.helo) || (validHostname(req.helo) && req.helo.replace(/\.$/, '').includes('.'))) return null;
      return reject(504, '5.5.2', `<${req.helo}>: Helo command rejected: need fully-qualified hostname`);

    case 'reject_unknown_sender_domain':
      return unknownSenderDomain(policy, env, req.sender);

    case 'reject_rbl_client': {
      const listed = await dnsListed(env, `${reverseAddressLabels(ip)}.${r.zone}`, r);
      return listed === null ? null : reject(554, '5.7.1', `Service unavailable; client [${ip}] blocked using ${r.zone}${listed}`);
    }
    case 'reject_rhsbl_client': {
      const name = (await req.client.lookup()).name;
      if (name === 'unknown') return null;
      const listed = await dnsListed(env, `${name}.${r.zone}`, r);
      return listed === null ? null : reject(554, '5.7.1', `Service unavailable; client host [${name}] blocked using ${r.zone}${listed}`);
    }
    case 'reject_rhsbl_sender': {
      const domain = req.sender ? splitAddress(req.sender).domain : '';
      if (!domain) return null;
      const listed = await dnsListed(env, `${domain}.${r.zone}`, r);
      return listed === null ? null : reject(554, '5.7.1', `Service unavailable; sender address [${req.sender}] blocked using ${r.zone}${listed}`);
    }
  }
  throw new Error(`restriction ${r.name} has no evaluation`); // parseRestrictionList admits only the names above
}

async function unlistedRecipient(policy: RestrictionPolicy, env: CheckEnvironment, recipient: string): Promise<Rejection | null> {
  let known: boolean;
  try {
    if (!(await policy.localDomains.has(splitAddress(recipient).domain))) return null;
    known = await env.knownRecipient(recipient);
  } catch {
    return lookupFailure(recipient);
  }
  return known ? null : reject(550, '5.1.1', `<${recipient}>: Recipient address rejected: User unknown in virtual mailbox table`);
}

/**
 * Postfix's reject_unknown_sender_domain: the domain needs an MX, or failing
 * that an A or AAAA record; a null MX (RFC 7505) says it sends no mail either.
 * Our own domains are not looked up.
 */
async function unknownSenderDomain(policy: RestrictionPolicy, env: CheckEnvironment, sender: string): Promise<Rejection | null> {
  const domain = sender ? splitAddress(sender).domain.replace(/\.$/, '') : '';
  // a domain table that cannot answer: the DNS check below decides, as for any domain
  if (!domain || /^\[.*\]$/.test(domain) || await Promise.resolve(policy.localDomains.has(domain)).catch(() => false)) return null;
  const notFound = reject(450, '4.1.8', `<${sender}>: Sender address rejected: Domain not found`);
  const tryLater = reject(450, '4.1.8', `<${sender}>: Sender address rejected: Domain lookup failed, try again later`);
  let temporary = false;
  try {
    const mx = await env.resolver.resolveMx(domain);
    if (mx.length === 1 && mx[0].exchange === '') {
      return reject(550, '5.7.27', `<${sender}>: Sender address rejected: Domain ${domain} does not accept mail (nullMX)`);
    }
    return null;
  } catch (e) {
    if (!(e instanceof DnsError)) throw e;
    if (e.code === 'NXDOMAIN') return notFound;
    if (e.temporary) temporary = true;
  }
  for (const lookup of [() => env.resolver.resolveA(domain), () => env.resolver.resolveAAAA(domain)]) {
    try {
      if ((await lookup()).length) return null;
    } catch (e) {
      if (!(e instanceof DnsError)) throw e;
      if (e.temporary) temporary = true;
    }
  }
  return temporary ? tryLater : notFound;
}

/** RFC 5782 answers that are the list's own error codes (Spamhaus: "query refused", "typing error"), not listings. */
const LIST_ERROR_ANSWER = /^127\.255\.255\.\d+$/;

/**
 * Looks `query` up in a DNS list: null when not listed (or the list did not
 * answer), else the reply suffix `; TXT reason` (empty when the list gives none).
 */
async function dnsListed(env: CheckEnvironment, query: string, r: Restriction): Promise<string | null> {
  let answers: string[];
  try {
    answers = await env.resolver.resolveA(query);
  } catch (e) {
    if (!(e instanceof DnsError)) throw e;
    if (e.temporary) env.warn({ dns_list: r.zone, query, err: e.message }, `${r.name} ${r.zone}: lookup of ${query} failed; not counted as listed`);
    return null;
  }
  const match = r.filter ? parseAddressPattern(r.filter)! : () => true;
  const hits = answers.filter((a) => !LIST_ERROR_ANSWER.test(a) && match(a));
  if (!hits.length) return null;
  let reason = '';
  try {
    const txt = await env.resolver.resolveTxt(query);
    if (txt.length) reason = txt[0].join('');
  } catch (e) {
    if (!(e instanceof DnsError)) throw e;
  }
  // the list's text goes into our reply: no control characters, a sane length
  reason = reason.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, 200);
  return reason ? `; ${reason}` : '';
}
