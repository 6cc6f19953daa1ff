/**
 * MTA-STS (RFC 8461): the `_mta-sts` TXT lookup (mailauth's resolvePolicy, through
 * our DNS cache), the HTTPS policy fetch (our own: mailauth's fetch is fixed to
 * port 443 and the system CAs, has no size limit and no media type check), the
 * policy parser (mailauth's), MX matching (our own: RFC 8461 4.1 lets a wildcard
 * cover one label only) and a policy cache on disk, in the spool's `mta-sts/`
 * directory (smtp's own account, 0700), so a policy survives restarts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as https from 'node:https';
import { randomBytes } from 'node:crypto';
import { resolvePolicy, parsePolicy } from 'mailauth/lib/mta-sts';
import { MainConfig, sharedResolver, Logger } from '@postern/common';

export interface StsPolicy {
  domain: string;
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  maxAge: number;
  /** ms since the epoch */
  fetched: number;
}

const MAX_POLICY_BYTES = 64 * 1024;
const DOMAIN_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

function cacheFile(dir: string, domain: string): string | null {
  // the domain names a file: only plain host names, so no path can be smuggled in
  return DOMAIN_RE.test(domain) ? path.join(dir, `${domain}.json`) : null;
}

export function readCached(dir: string, domain: string, now = Date.now()): StsPolicy | null {
  const f = cacheFile(dir, domain);
  if (!f) return null;
  try {
    const p = JSON.parse(fs.readFileSync(f, 'utf8')) as StsPolicy;
    if (p.domain !== domain || typeof p.fetched !== 'number' || !Array.isArray(p.mx)) return null;
    return p.fetched + p.maxAge * 1000 > now ? p : null; // expired: as if none
  } catch { return null; }
}

function writeCached(dir: string, p: StsPolicy): void {
  const f = cacheFile(dir, p.domain);
  if (!f) return;
  const tmp = `${f}.${randomBytes(4).toString('hex')}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(p) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, f);
}

const caByConfig = new WeakMap<MainConfig, Buffer | null>();

/**
 * smtp_tls_CAfile's PEM (null: not set, the system's CAs), the CAs MTA-STS
 * verifies with: read once per configuration load (a reload is a new
 * MainConfig). A file that cannot be read is not remembered: it is tried again
 * at the next delivery, so fixing it needs no reload.
 */
export function stsCa(config: MainConfig): { ca?: Buffer; error?: string } {
  let ca = caByConfig.get(config);
  if (ca === undefined) {
    const file = config.get('smtp_tls_CAfile');
    try { ca = file ? fs.readFileSync(file) : null; } catch (e) {
      return { error: `smtp_tls_CAfile ${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
    }
    caByConfig.set(config, ca);
  }
  return ca ? { ca } : {};
}

/** RFC 8461 4.1: an exact name, or "*.example.com" matching exactly one more leftmost label. */
export function mxMatches(host: string, patterns: string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return patterns.some((p0) => {
    const p = p0.toLowerCase().replace(/\.$/, '');
    if (!p.startsWith('*.')) return p === h;
    const dot = h.indexOf('.');
    return dot > 0 && h.slice(dot + 1) === p.slice(2);
  });
}

/** GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt, at the address our resolver gives, certificate checked. */
async function fetchPolicyText(domain: string, config: MainConfig): Promise<string> {
  const host = `mta-sts.${domain}`;
  const resolver = sharedResolver(config);
  const v4 = await resolver.resolveA(host).catch(() => [] as string[]);
  const addrs = v4.length ? v4 : await resolver.resolveAAAA(host).catch(() => [] as string[]);
  if (!addrs.length) throw new Error(`${host} has no address`);
  const { ca, error } = stsCa(config);
  if (error) throw new Error(error);
  const timeout = config.seconds('smtp_mta_sts_fetch_timeout') * 1000;
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: addrs[0], port: config.int('smtp_mta_sts_https_port'), servername: host, path: '/.well-known/mta-sts.txt',
      method: 'GET', headers: { host }, ca, rejectUnauthorized: true, timeout, agent: false,
    }, (res) => {
      // RFC 8461 3.3: 200 only (no redirects), text/plain
      if (res.statusCode !== 200) { res.resume(); return reject(new Error(`https://${host}/.well-known/mta-sts.txt: HTTP ${res.statusCode}`)); }
      if (!/^text\/plain\b/i.test(String(res.headers['content-type'] ?? ''))) {
        res.resume();
        return reject(new Error(`https://${host}/.well-known/mta-sts.txt: media type ${res.headers['content-type'] ?? 'missing'}, not text/plain`));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_POLICY_BYTES) { req.destroy(new Error(`policy larger than ${MAX_POLICY_BYTES} bytes`)); return; }
        chunks.push(c);
      });
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from https://${host} within ${timeout} ms`)));
    req.on('error', (e) => reject(new Error(`policy fetch from https://${host}: ${(e as Error).message}`)));
    req.end();
  });
}

/**
 * The MTA-STS policy in force for `domain`, or null (none). RFC 8461 5.1: a
 * cached, unexpired policy is used when the TXT record is missing or its id is
 * unchanged; a changed id, or a cached policy past half its max_age (refresh
 * before expiry, 10.2) is fetched again, and a failed fetch keeps the cached one.
 */
export async function stsPolicy(domain: string, config: MainConfig, cacheDir: string, log: Logger, queueId?: string): Promise<StsPolicy | null> {
  const name = domain.toLowerCase().replace(/\.$/, '');
  const cached = readCached(cacheDir, name);
  let id: string | false;
  try {
    id = await resolvePolicy(name, { resolver: sharedResolver(config).mailauthResolver() } as any);
  } catch (e) {
    log.warn({ queue_id: queueId, domain: name, err: (e as Error).message || (e as any).code }, 'MTA-STS TXT lookup failed; using the cached policy if any');
    return active(cached);
  }
  if (!id) return active(cached);
  const fresh = cached && cached.id === id && Date.now() - cached.fetched < Math.min(cached.maxAge * 500, 86400 * 1000);
  if (fresh) return active(cached);
  try {
    const text = await fetchPolicyText(name, config);
    const p = parsePolicy(text) as any;
    const policy: StsPolicy = { domain: name, id, mode: p.mode, mx: p.mx ?? [], maxAge: p.maxAge, fetched: Date.now() };
    try { writeCached(cacheDir, policy); } catch (e) {
      log.warn({ queue_id: queueId, domain: name, err: (e as Error).message }, 'MTA-STS policy cache not written');
    }
    log.info({ queue_id: queueId, domain: name, mode: policy.mode, id, max_age: policy.maxAge, mx: policy.mx }, 'MTA-STS policy fetched');
    return active(policy);
  } catch (e) {
    log.warn({ queue_id: queueId, domain: name, err: (e as Error).message }, cached ? 'MTA-STS policy fetch failed; using the cached policy' : 'MTA-STS policy fetch failed; no policy');
    return active(cached);
  }
}

function active(p: StsPolicy | null): StsPolicy | null {
  return p && p.mode !== 'none' ? p : null;
}
