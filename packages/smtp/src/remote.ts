/**
 * Delivery to the world: find the destination's mail hosts (MX, else A/AAAA;
 * a null MX refuses mail), try each address in turn, STARTTLS when offered
 * (plaintext retry on a failed handshake at level `may`), reuse an idle
 * connection to the same host for the next message, and skip hosts that
 * failed at connect or greeting so a queue does not hammer them. Which hosts
 * are dead is qmgr's: it sends them with each request (`skip`) and learns new
 * ones from the reply, so the table is one for every smtp process and a flush
 * can forget it (docs/smtp.md).
 */
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import {
  MainConfig, QueueFileInfo, openMessage, openTable, sharedResolver, resolveMailHosts, DnsError, Logger, IdlePool,
} from '@postern/common';
import { DeliveryResult, dsnOf, oneLine } from './results.js';
import { withoutSelf } from './loop.js';

type TlsLevel = 'none' | 'may' | 'encrypt';

interface Target { host: string; address: string; port: number }

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
  if (v === 'none' || v === 'may' || v === 'encrypt') return v;
  return config.get('smtp_tls_security_level') as TlsLevel;
}

async function route(domain: string, config: MainConfig): Promise<Route> {
  const resolver = sharedResolver(config);
  const relay = config.get('relayhost');
  let tls = await tlsLevelFor(domain, config);
  let auth: Route['auth'];
  if (relay) {
    const r = parseRelayhost(relay);
    const passwords = openTable(config.get('smtp_sasl_password_maps'), 'smtp_sasl_password_maps');
    const creds = await passwords?.lookup(`[${r.host}]:${r.port}`) ?? await passwords?.lookup(r.host);
    if (creds) {
      const i = creds.indexOf(':');
      auth = { user: creds.slice(0, i), pass: creds.slice(i + 1) };
      tls = 'encrypt'; // never send a password in the clear
    }
    domain = r.host;
    if (!r.mx) {
      const addrs = await resolveHost(r.host, config);
      return { targets: addrs.map((a) => ({ host: r.host, address: a, port: r.port })), tls, auth,
        ...(addrs.length ? {} : { defer: { dsn: '4.4.3', reason: `relayhost ${r.host}: no address` } }) };
    }
    const mx = await resolveMailHosts(resolver, r.host);
    const own = withoutSelf(r.host, mx.hosts, r.port, config);
    if ('bounce' in own) return { targets: [], tls, bounce: own.bounce };
    return { targets: own.hosts.flatMap((h) => h.addresses.map((a) => ({ host: h.name, address: a, port: r.port }))), tls, auth };
  }
  const port = config.int('smtp_port');
  try {
    const mx = await resolveMailHosts(resolver, domain);
    if (mx.nullMx) return { targets: [], tls, bounce: { dsn: '5.1.10', reason: `${domain}: domain does not accept mail (null MX)` } };
    const own = withoutSelf(domain, mx.hosts, port, config);
    if ('bounce' in own) return { targets: [], tls, bounce: own.bounce };
    const targets = own.hosts.flatMap((h) => h.addresses.map((a) => ({ host: h.name, address: a, port })));
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

async function resolveHost(host: string, config: MainConfig): Promise<string[]> {
  if (/^[0-9.]+$/.test(host) || host.includes(':')) return [host];
  const r = sharedResolver(config);
  const v4 = await r.resolveA(host).catch(() => [] as string[]);
  const v6 = await r.resolveAAAA(host).catch(() => [] as string[]);
  return [...v4, ...v6];
}

function connect(t: Target, tls: TlsLevel, plaintext: boolean, config: MainConfig): Promise<any> {
  const conn = new SMTPConnection({
    host: t.address, port: t.port, name: config.get('smtp_helo_name'),
    secure: false, ignoreTLS: plaintext || tls === 'none', requireTLS: tls === 'encrypt', opportunisticTLS: tls === 'may',
    tls: { rejectUnauthorized: false, servername: /^[0-9.:]+$/.test(t.host) ? undefined : t.host, minVersion: 'TLSv1.2' },
    connectionTimeout: config.seconds('smtp_connect_timeout') * 1000, greetingTimeout: 30000,
    socketTimeout: config.seconds('delivery_timeout') * 1000, logger: false,
  } as any);
  return new Promise((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => { conn.off('error', reject); conn.on('error', () => undefined); resolve(conn); });
  });
}

function sendOn(conn: any, info: QueueFileInfo, to: string[]): Promise<{ err: any; info: any }> {
  return new Promise((resolve) => {
    conn.send({ from: info.envelope.sender, to, size: info.messageLength + info.prepend.length } as any, openMessage(info) as any,
      (err: any, sent: any) => resolve({ err, info: sent }));
  });
}

export async function deliverRemote(info: QueueFileInfo, domain: string, recipients: { index: number; address: string }[],
  config: MainConfig, log: Logger, dead: DeadHosts): Promise<DeliveryResult[]> {
  const all = (status: DeliveryResult['status'], dsn: string, reason: string, relay?: string): DeliveryResult[] =>
    recipients.map((r) => ({ index: r.index, status, dsn, reason, relay }));
  const rt = await route(domain, config);
  if (rt.bounce) return all('bounced', rt.bounce.dsn, rt.bounce.reason);
  if (rt.defer) return all('deferred', rt.defer.dsn, rt.defer.reason);
  let lastError = `${domain}: no mail host could be reached`;
  let lastDsn = '4.4.1';
  for (const t of rt.targets) {
    const key = `${t.address}:${t.port}`;
    const relay = `${t.host}[${t.address}]:${t.port}`;
    if (dead.isDead(key)) { lastError = `${relay}: host marked dead after an earlier failure`; continue; }
    let conn = idle.take(key)?.conn ?? null;
    if (conn) {
      // an idle connection may have been closed by the server meanwhile
      const ok = await new Promise<boolean>((r) => conn.reset((err: any) => r(!err)));
      if (!ok) { conn.close(); conn = null; }
    }
    if (!conn) {
      try {
        conn = await connect(t, rt.tls, false, config);
      } catch (e) {
        const err = e as any;
        // nodemailer reports a handshake broken after STARTTLS as ESOCKET with OpenSSL's text
        if (err.code === 'ESOCKET' && /SSL|TLS|certificate|handshake/i.test(String(err.message))) err.code = 'ETLS';
        if (err.code === 'ETLS' && rt.tls === 'may') {
          // opportunistic TLS: a failed handshake means the same host in plaintext, as Postfix does
          log.info({ relay, err: oneLine(err.message) }, 'TLS handshake failed; retrying in plaintext');
          try { conn = await connect(t, rt.tls, true, config); } catch (e2) { lastError = `${relay}: ${oneLine((e2 as Error).message)}`; }
        } else if (err.code === 'ETLS') {
          lastError = `${relay}: TLS is required, but was not offered or failed: ${oneLine(err.message)}`;
          lastDsn = '4.7.5';
        } else {
          lastError = `connect to ${relay}: ${oneLine(err.response || err.message)}`;
          if (err.responseCode >= 500) lastDsn = dsnOf(err.response, err.responseCode);
        }
        if (!conn) {
          if (err.code !== 'ETLS') dead.markDead(key);
          continue;
        }
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
    const result = await sendOn(conn, info, recipients.map((r) => r.address));
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
        `host ${relay} said: ${oneLine(err.response)}`, relay);
    }
    idle.put(key, conn, undefined, config.seconds('smtp_connection_cache_time') * 1000);
    const accepted = new Set<string>(result.info?.accepted ?? []);
    return recipients.map((r): DeliveryResult => {
      const rej = rejected.find((e) => e.recipient === r.address);
      if (rej) {
        return { index: r.index, status: rej.responseCode >= 500 ? 'bounced' : 'deferred',
          dsn: dsnOf(rej.response, rej.responseCode), reason: `host ${relay} said: ${oneLine(rej.response)}`, relay };
      }
      if (accepted.has(r.address)) return { index: r.index, status: 'sent', dsn: dsnOf(result.info?.response) , reason: oneLine(result.info?.response), relay };
      return { index: r.index, status: 'deferred', dsn: '4.4.2', reason: `no reply from ${relay} for this recipient`, relay };
    });
  }
  return all('deferred', lastDsn, lastError);
}
