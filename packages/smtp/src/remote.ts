/**
 * Delivery to the world: find the destination's mail hosts (MX, else A/AAAA;
 * a null MX refuses mail), try each address in turn, STARTTLS when offered
 * (plaintext retry on a failed handshake at level `may`), reuse an idle
 * connection to the same host for the next message, and skip hosts that
 * failed at connect or greeting so a queue does not hammer them. Which hosts
 * are dead is qmgr's: it sends them with each request (`skip`) and learns new
 * ones from the reply, so the table is one for every smtp process and a flush
 * can forget it (docs/smtp.md). Which TLS each host gets, and how its certificate
 * is checked (DANE, MTA-STS), is the TLS policy of docs/tls-policy.md.
 */
import * as path from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import {
  MainConfig, QueueFileInfo, openMessage, openTable, sharedResolver, resolveMailHosts, DnsError, Logger, IdlePool, stsCa, stsMxMatches,
  MailHost, SecureMailHost, TlsaData, Recipient, TableUnavailable,
} from '@postern/common';
import { DeliveryResult, dsnOf, oneLine } from './results.js';
import { withoutSelf } from './loop.js';
import { HostPolicy, TlsOutcome, checkPeer, tlsLogLine, usableTlsa } from './tls-policy.js';
import { stsPolicy } from './mta-sts.js';
import { recordTlsAttempt } from './tlsrpt.js';

type TlsLevel = 'none' | 'may' | 'encrypt' | 'dane';

interface Target { host: string; address: string; port: number; policy: HostPolicy }

/** Where to connect: the relayhost's hosts or the domain's MX hosts, in order. */
interface Route {
  targets: Target[];
  /** Permanent routing failure (null MX, no such domain): bounce. */
  bounce?: { dsn: string; reason: string };
  /** Temporary routing failure: defer. */
  defer?: { dsn: string; reason: string };
  auth?: { user: string; pass: string };
  tls: TlsLevel;
}

/** Dead hosts ("address:port"): the ones qmgr says to skip, and the ones this delivery found dead. */
export interface DeadHosts {
  isDead(key: string): boolean;
  markDead(key: string): void;
}
/** Idle sessions by "address:port", kept for smtp_connection_cache_time. */
const idle = new IdlePool<any>();

function parseRelayhost(spec: string): { host: string; port: number; mx: boolean } {
  const m = /^(\[)?([^\]\s:]+|[0-9a-f:.]+)\]?(?::(\d+))?$/i.exec(spec.trim());
  if (!m) throw new Error(`relayhost: cannot parse "${spec}"`);
  return { host: m[2], port: m[3] ? parseInt(m[3], 10) : 25, mx: !m[1] };
}

async function tlsLevelFor(domain: string, config: MainConfig): Promise<TlsLevel> {
  const table = openTable(config.get('smtp_tls_policy_maps'), 'smtp_tls_policy_maps');
  const v = (await table?.lookup(domain))?.split(/\s+/)[0];
  if (v === 'none' || v === 'may' || v === 'encrypt' || v === 'dane') return v;
  return config.get('smtp_tls_security_level') as TlsLevel;
}

/** The policy of a host under a plain level (dane without DNSSEC-proven TLSA records is may). */
function levelPolicy(level: TlsLevel): HostPolicy {
  return level === 'dane' ? { name: 'may', connect: 'may' } : { name: level, connect: level };
}

interface RouteCtx { config: MainConfig; log: Logger; queueId: string; stsCacheDir: string }

async function route(domain: string, ctx: RouteCtx): Promise<Route> {
  const { config, log } = ctx;
  const resolver = sharedResolver(config);
  // a next hop from transport_maps ([host]:port, host:port) overrides relayhost, as in Postfix
  const explicit = /[[:]/.test(domain) ? domain : '';
  const relay = explicit || config.get('relayhost');
  let tls = await tlsLevelFor(explicit ? parseRelayhost(explicit).host : domain, config);
  let auth: Route['auth'];
  if (relay) {
    // DANE and MTA-STS are about the recipient domain's MX hosts: a relayhost gets the plain level (docs/tls-policy.md)
    const r = parseRelayhost(relay);
    const passwords = openTable(config.get('smtp_sasl_password_maps'), 'smtp_sasl_password_maps');
    const creds = await passwords?.lookup(`[${r.host}]:${r.port}`) ?? await passwords?.lookup(r.host);
    if (creds) {
      const i = creds.indexOf(':');
      auth = { user: creds.slice(0, i), pass: creds.slice(i + 1) };
      tls = 'encrypt'; // never send a password in the clear
    }
    const policy = levelPolicy(tls);
    domain = r.host;
    if (!r.mx) {
      const addrs = await resolveHost(r.host, config);
      return { targets: addrs.map((a) => ({ host: r.host, address: a, port: r.port, policy })), tls, auth,
        ...(addrs.length ? {} : { defer: { dsn: '4.4.3', reason: `relayhost ${r.host}: no address` } }) };
    }
    const mx = await resolveMailHosts(resolver, r.host);
    const own = withoutSelf(r.host, mx.hosts, r.port, config);
    if ('bounce' in own) return { targets: [], tls, bounce: own.bounce };
    return { targets: own.hosts.flatMap((h) => h.addresses.map((a) => ({ host: h.name, address: a, port: r.port, policy }))), tls, auth };
  }
  const port = config.int('smtp_port');
  const dnssec = config.get('smtp_dns_support_level') === 'dnssec';
  if (tls === 'dane' && !dnssec) {
    // as Postfix: DANE without DNSSEC lookups is not possible; opportunistic TLS instead
    log.warn({ queue_id: ctx.queueId, domain }, 'smtp_tls_security_level = dane needs smtp_dns_support_level = dnssec; using may');
  }
  try {
    const mx = tls === 'dane' && dnssec ? await resolveMailHosts(resolver, domain, { dnssec: true }) : { ...(await resolveMailHosts(resolver, domain)), mxSecure: false };
    if (mx.nullMx) return { targets: [], tls, bounce: { dsn: '5.1.10', reason: `${domain}: domain does not accept mail (null MX)` } };
    const own = withoutSelf(domain, mx.hosts, port, config);
    if ('bounce' in own) return { targets: [], tls, bounce: own.bounce };
    const policies = await hostPolicies(domain, own.hosts, tls, tls === 'dane' && dnssec && mx.mxSecure, port, ctx);
    if ('defer' in policies) return { targets: [], tls, defer: policies.defer };
    const targets = own.hosts.filter((h) => policies.map.has(h.name))
      .flatMap((h) => h.addresses.map((a) => ({ host: h.name, address: a, port, policy: policies.map.get(h.name)! })));
    if (!targets.length) return { targets, tls, defer: { dsn: '4.4.3', reason: `${domain}: no address for any mail host` } };
    return { targets, tls };
  } catch (e) {
    if (e instanceof DnsError && !e.temporary) {
      if (e.code === 'NODATA') return { targets: [], tls, bounce: { dsn: '5.4.4', reason: `${domain}: no mail host has an address (${e.message})` } };
      return { targets: [], tls, bounce: { dsn: '5.1.2', reason: `Host or domain name not found. Name service error for name=${domain}: ${e.code}` } };
    }
    return { targets: [], tls, defer: { dsn: '4.4.3', reason: `Host or domain name lookup failed for ${domain}: ${(e as Error).message}` } };
  }
}

/**
 * Each MX host's TLS policy (docs/tls-policy.md): DANE when the domain's MX answer
 * and a host's address and TLSA answers are DNSSEC-secure (RFC 7672); else the
 * domain's MTA-STS policy (RFC 8461); else the configured level. A host whose
 * TLSA lookup fails (bogus, server failure) is left out, as RFC 7672 2.2 says.
 */
async function hostPolicies(domain: string, hosts: (MailHost | SecureMailHost)[], level: TlsLevel, daneOk: boolean, port: number,
  ctx: RouteCtx): Promise<{ map: Map<string, HostPolicy> } | { defer: { dsn: string; reason: string } }> {
  const map = new Map<string, HostPolicy>();
  if (daneOk) {
    const resolver = sharedResolver(ctx.config);
    const failed: string[] = [];
    let anyTlsa = false;
    for (const h of hosts as SecureMailHost[]) {
      if (!h.secure) { map.set(h.name, { name: 'may', connect: 'may' }); continue; } // insecure address: no DANE (RFC 7672 2.2.2)
      const name = `_${port}._tcp.${h.name}`;
      try {
        const a = await resolver.resolveSecure(name, 'TLSA');
        if (!a.secure) { map.set(h.name, { name: 'may', connect: 'may' }); continue; }
        anyTlsa = true;
        const usable = usableTlsa(a.records.map((r) => r.data as TlsaData));
        // RFC 7672 2.2: TLSA records none of which is usable still mean TLS is required, unauthenticated
        map.set(h.name, usable.length ? { name: 'dane', connect: 'encrypt', tlsa: usable } : { name: 'encrypt', connect: 'encrypt' });
      } catch (e) {
        if (e instanceof DnsError && !e.temporary) { map.set(h.name, { name: 'may', connect: 'may' }); continue; } // no TLSA: opportunistic
        failed.push(`${h.name}: TLSA lookup failed: ${(e as Error).message}`);
        ctx.log.warn({ queue_id: ctx.queueId, host: h.name, err: (e as Error).message }, 'DANE TLSA lookup failed; host not used');
      }
    }
    if (anyTlsa || failed.length) {
      if (!map.size) return { defer: { dsn: '4.7.5', reason: `${domain}: DANE: ${failed.join('; ')}` } };
      return { map };
    }
  }
  const sts = level !== 'none' && ctx.config.bool('smtp_mta_sts_enable')
    ? await stsPolicy(domain, ctx.config, ctx.stsCacheDir, ctx.log, ctx.queueId) : null;
  if (!sts) {
    for (const h of hosts) map.set(h.name, levelPolicy(level));
    return { map };
  }
  const { ca, error } = stsCa(ctx.config);
  // without the administrator's CAs nothing can verify: defer, naming the parameter and file
  if (error) return { defer: { dsn: '4.7.5', reason: `MTA-STS policy for ${domain}: ${error}` } };
  const mode = sts.mode as 'enforce' | 'testing';
  const outside: string[] = [];
  for (const h of hosts) {
    const listed = stsMxMatches(h.name, sts.mx);
    if (!listed) outside.push(h.name);
    if (!listed && mode === 'enforce') continue;
    // testing: TLS as the level says, failures only recorded; enforce: TLS required and verified
    map.set(h.name, { name: 'mta-sts', connect: mode === 'enforce' ? 'encrypt' : levelPolicy(level).connect, sts: { mode, domain }, ca });
  }
  if (outside.length) {
    ctx.log.warn({ queue_id: ctx.queueId, domain, mode, mx: outside, policy_mx: sts.mx },
      mode === 'enforce' ? 'MTA-STS enforce: MX host not in the policy; not used' : 'MTA-STS testing: MX host not in the policy; used anyway');
  }
  if (!map.size) {
    return { defer: { dsn: '4.7.5', reason: `MTA-STS policy for ${domain} (enforce): no MX host matches the policy (MX ${outside.join(', ')}; policy mx: ${sts.mx.join(', ')})` } };
  }
  return { map };
}

async function resolveHost(host: string, config: MainConfig): Promise<string[]> {
  if (/^[0-9.]+$/.test(host) || host.includes(':')) return [host];
  const r = sharedResolver(config);
  const v4 = await r.resolveA(host).catch(() => [] as string[]);
  const v6 = await r.resolveAAAA(host).catch(() => [] as string[]);
  return [...v4, ...v6];
}

function connect(t: Target, plaintext: boolean, config: MainConfig): Promise<any> {
  const tls = t.policy.connect;
  const conn = new SMTPConnection({
    host: t.address, port: t.port, name: config.get('smtp_helo_name'),
    secure: false, ignoreTLS: plaintext || tls === 'none', requireTLS: tls === 'encrypt', opportunisticTLS: tls === 'may',
    // the certificate is checked after the handshake, as the host's policy says (tls-policy.ts): never refused here
    tls: { rejectUnauthorized: false, servername: /^[0-9.:]+$/.test(t.host) ? undefined : t.host, minVersion: 'TLSv1.2',
      ...(t.policy.ca ? { ca: t.policy.ca } : {}) },
    connectionTimeout: config.seconds('smtp_connect_timeout') * 1000, greetingTimeout: 30000,
    socketTimeout: config.seconds('delivery_timeout') * 1000, logger: false,
  } as any);
  return new Promise((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => { conn.off('error', reject); conn.on('error', () => undefined); resolve(conn); });
  });
}

/**
 * Send the message to `to` on an open session. DSN parameters go along when the
 * server offers DSN (nodemailer adds RET/ENVID to MAIL itself; NOTIFY and ORCPT
 * are per recipient, which its one-per-envelope `dsn` cannot say, so the RCPT
 * arguments come from the queue file here); REQUIRETLS when the message asks.
 */
function sendOn(conn: any, info: QueueFileInfo, to: { index: number; address: string }[]): Promise<{ err: any; info: any }> {
  const env = info.envelope;
  const byAddress = new Map<string, number>();
  for (const r of to) if (!byAddress.has(r.address)) byAddress.set(r.address, r.index);
  conn._getDsnRcptToArgs = function (this: any): string {
    if (!this._supportedExtensions.includes('DSN')) return '';
    const rcpt = env.recipients[byAddress.get(this._recipientQueue[this._recipientQueue.length - 1]) ?? -1];
    return rcpt ? ' ' + rcptDsnArgs(rcpt).join(' ') : '';
  };
  const dsn = env.dsn?.ret || env.dsn?.envid ? { ret: env.dsn.ret, envid: env.dsn.envid } : undefined;
  return new Promise((resolve) => {
    conn.send({ from: env.sender, to: to.map((r) => r.address), size: info.messageLength + info.prepend.length,
      ...(dsn ? { dsn } : {}), ...(env.requireTls ? { requireTLSExtensionEnabled: true } : {}) } as any, openMessage(info) as any,
    (err: any, sent: any) => resolve({ err, info: sent }));
  });
}

/** xtext (RFC 3461 4): `+`, `=`, controls, space and non-ASCII bytes as +XX. */
function xtext(s: string): string {
  return [...Buffer.from(s, 'utf8')].map((b) => (b < 0x21 || b > 0x7e || b === 0x2b || b === 0x3d
    ? `+${b.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(b))).join('');
}

/** NOTIFY and ORCPT for one recipient: the client's, else (ORCPT) `rfc822;` and the original address, as Postfix. */
export function rcptDsnArgs(r: Recipient): string[] {
  const args: string[] = [];
  if (r.notify?.length) args.push(`NOTIFY=${r.notify.join(',')}`);
  const orcpt = r.orcpt ? (/^[A-Za-z0-9-]+;/.test(r.orcpt) ? r.orcpt : `rfc822;${r.orcpt}`) : `rfc822;${r.address}`;
  const i = orcpt.indexOf(';');
  args.push(`ORCPT=${orcpt.slice(0, i)};${xtext(orcpt.slice(i + 1))}`);
  return args;
}

/**
 * RFC 8689: a REQUIRETLS message goes only over TLS authenticated by DANE or
 * MTA-STS (testing mode counts, as RFC 8689 4.2.2 says) to a server that offers
 * REQUIRETLS. Why not, or null.
 */
function requireTlsRefusal(conn: any, outcome: TlsOutcome | undefined, policy: HostPolicy): string | null {
  if (!outcome?.tls) return 'no TLS session';
  if (!outcome.verified || (policy.name !== 'dane' && policy.name !== 'mta-sts')) {
    return `TLS not verified by DANE or MTA-STS (policy ${policy.name}${outcome.failure ? `: ${outcome.failure}` : ''})`;
  }
  if (!conn._supportedExtensions?.includes('REQUIRETLS')) return 'server does not offer REQUIRETLS';
  return null;
}

export async function deliverRemote(info: QueueFileInfo, domain: string, recipients: { index: number; address: string }[],
  config: MainConfig, log: Logger, dead: DeadHosts, spoolRoot: string): Promise<DeliveryResult[]> {
  const all = (status: DeliveryResult['status'], dsn: string, reason: string, relay?: string, tls?: TlsOutcome): DeliveryResult[] =>
    recipients.map((r) => ({ index: r.index, status, dsn, reason, relay, ...(tls ? { tls } : {}) }));
  const queueId = info.envelope.id;
  let rt: Route;
  try {
    rt = await route(domain, { config, log, queueId, stsCacheDir: path.join(spoolRoot, 'mta-sts') });
  } catch (e) {
    // smtp_tls_policy_maps or smtp_sasl_password_maps could not answer (a database down): defer, never bounce
    if (e instanceof TableUnavailable) return all('deferred', '4.3.0', `Temporary lookup failure: ${oneLine((e as Error).message)}`);
    throw e;
  }
  if (rt.bounce) return all('bounced', rt.bounce.dsn, rt.bounce.reason);
  if (rt.defer) return all('deferred', rt.defer.dsn, rt.defer.reason);
  let lastError = `${domain}: no mail host could be reached`;
  let lastDsn = '4.4.1';
  /** Hosts that answered but could not take a REQUIRETLS message. */
  const requireTlsRefused: string[] = [];
  let tried = 0;
  for (const t of rt.targets) {
    const key = `${t.address}:${t.port}`;
    const relay = `${t.host}[${t.address}]:${t.port}`;
    if (dead.isDead(key)) { lastError = `${relay}: host marked dead after an earlier failure`; continue; }
    tried++;
    // an idle connection is reused only under the same policy (its certificate was checked for that one)
    const idleKey = `${key}|${t.host}|${t.policy.name}|${t.policy.sts?.mode ?? ''}|${(t.policy.tlsa ?? []).map((r) => r.data.toString('hex')).join(',')}`;
    let outcome: TlsOutcome | undefined;
    // TLS-RPT (RFC 8460): each new session's TLS outcome is recorded for the domain's daily report (tlsrpt.ts)
    let tlsError: any;
    const report = (o: TlsOutcome | undefined, c?: any) => recordTlsAttempt(config, log, spoolRoot, queueId,
      { domain, host: t.host, address: t.address, policy: t.policy, outcome: o, error: tlsError, localAddress: c?._socket?.localAddress });
    let conn = idle.take(idleKey)?.conn ?? null;
    if (conn) {
      // an idle connection may have been closed by the server meanwhile
      const ok = await new Promise<boolean>((r) => conn.reset((err: any) => r(!err)));
      if (!ok) { conn.close(); conn = null; } else outcome = conn.posternTls;
    }
    if (!conn) {
      try {
        conn = await connect(t, false, config);
      } catch (e) {
        const err = e as any;
        // nodemailer reports a handshake broken after STARTTLS as ESOCKET with OpenSSL's text
        if (err.code === 'ESOCKET' && /SSL|TLS|certificate|handshake/i.test(String(err.message))) err.code = 'ETLS';
        if (err.code === 'ETLS') tlsError = err;
        if (err.code === 'ETLS' && t.policy.connect === 'may') {
          // opportunistic TLS: a failed handshake means the same host in plaintext, as Postfix does
          log.info({ queue_id: queueId, relay, err: oneLine(err.message) }, 'TLS handshake failed; retrying in plaintext');
          try { conn = await connect(t, true, config); } catch (e2) { lastError = `${relay}: ${oneLine((e2 as Error).message)}`; }
        } else if (err.code === 'ETLS') {
          lastError = `${relay}: TLS is required${t.policy.name === 'dane' || t.policy.name === 'mta-sts' ? ` (${t.policy.name})` : ''}, but was not offered or failed: ${oneLine(err.message)}`;
          lastDsn = '4.7.5';
        } else {
          lastError = `connect to ${relay}: ${oneLine(err.response || err.message)}`;
          if (err.responseCode >= 500) lastDsn = dsnOf(err.response, err.responseCode);
        }
        if (!conn) {
          if (tlsError) await report(undefined);
          if (err.code !== 'ETLS') dead.markDead(key);
          continue;
        }
      }
      outcome = checkPeer(conn._socket, t.policy, t.host);
      conn.posternTls = outcome;
      await report(outcome, conn);
      if (outcome.tls) {
        log.info({ queue_id: queueId, relay, tls_policy: outcome.policy, verified: outcome.verified, protocol: outcome.protocol, cipher: outcome.cipher },
          tlsLogLine(outcome, relay));
      }
      const mustVerify = t.policy.name === 'dane' || (t.policy.name === 'mta-sts' && t.policy.sts?.mode === 'enforce');
      if (t.policy.name === 'mta-sts' && !outcome.tls && !outcome.failure) outcome.failure = 'STARTTLS was not done';
      if (outcome.failure && mustVerify) {
        conn.close();
        const what = t.policy.name === 'dane' ? 'DANE' : `MTA-STS policy for ${t.policy.sts!.domain} (enforce)`;
        log.warn({ queue_id: queueId, relay, tls_policy: outcome.policy, err: outcome.failure }, `${what}: ${relay}: ${outcome.failure}; host not used`);
        lastError = `${what}: TLS certificate of ${relay} not accepted: ${outcome.failure}`;
        lastDsn = '4.7.5';
        continue;
      }
      if (outcome.failure) {
        // MTA-STS testing: deliver, and record what enforce would have refused
        log.warn({ queue_id: queueId, relay, tls_policy: outcome.policy, err: outcome.failure },
          `MTA-STS policy for ${t.policy.sts?.domain} (testing): ${relay}: ${outcome.failure}; delivering anyway`);
      }
      if (rt.auth) {
        try {
          await new Promise<void>((res, rej) => conn.login({ user: rt.auth!.user, pass: rt.auth!.pass }, (e: any) => (e ? rej(e) : res())));
        } catch (e) {
          conn.close();
          const err = e as any;
          return all('deferred', '4.7.8', `SASL authentication failed at ${relay}: ${oneLine(err.response || err.message)}`, relay);
        }
      }
    }
    if (info.envelope.requireTls) {
      const refusal = requireTlsRefusal(conn, outcome, t.policy);
      if (refusal) {
        // not this host; another MX may do (RFC 8689 4.2.1), else the message bounces below
        idle.put(idleKey, conn, undefined, config.seconds('smtp_connection_cache_time') * 1000);
        log.warn({ queue_id: queueId, relay, tls_policy: outcome?.policy, err: refusal }, `REQUIRETLS: ${relay}: ${refusal}; host not used`);
        requireTlsRefused.push(`${relay}: ${refusal}`);
        continue;
      }
    }
    const result = await sendOn(conn, info, recipients);
    const rejected: any[] = result.err?.rejectedErrors ?? result.info?.rejectedErrors ?? [];
    if (result.err && !result.err.rejectedErrors) {
      const err = result.err;
      conn.close();
      if (!err.responseCode) {
        // the connection broke mid-transaction: next host if there is one
        lastError = `${relay}: lost connection: ${oneLine(err.message)}`;
        continue;
      }
      return all(err.responseCode >= 500 ? 'bounced' : 'deferred', dsnOf(err.response, err.responseCode),
        `host ${relay} said: ${oneLine(err.response)}`, relay, outcome);
    }
    idle.put(idleKey, conn, undefined, config.seconds('smtp_connection_cache_time') * 1000);
    const accepted = new Set<string>(result.info?.accepted ?? []);
    return recipients.map((r): DeliveryResult => {
      const rej = rejected.find((e) => e.recipient === r.address);
      if (rej) {
        return { index: r.index, status: rej.responseCode >= 500 ? 'bounced' : 'deferred',
          dsn: dsnOf(rej.response, rej.responseCode), reason: `host ${relay} said: ${oneLine(rej.response)}`, relay, tls: outcome };
      }
      if (accepted.has(r.address)) {
        // a next hop that offers DSN got NOTIFY and reports success itself (Postfix's smtp_rcpt_done)
        const dsnAction = conn._supportedExtensions?.includes('DSN') ? 'passed' : 'relayed';
        return { index: r.index, status: 'sent', dsn: dsnOf(result.info?.response), reason: oneLine(result.info?.response), relay, tls: outcome, dsnAction };
      }
      return { index: r.index, status: 'deferred', dsn: '4.4.2', reason: `no reply from ${relay} for this recipient`, relay, tls: outcome };
    });
  }
  if (requireTlsRefused.length && requireTlsRefused.length === tried) {
    // RFC 8689 5: no fallback to delivery without REQUIRETLS; a permanent failure
    return all('bounced', '5.7.10', `REQUIRETLS: no mail host of ${domain} meets the requirement: ${requireTlsRefused.join('; ')}`);
  }
  return all('deferred', lastDsn, lastError);
}
