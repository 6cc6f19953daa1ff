/**
 * MTA-STS (RFC 8461): the `_mta-sts` TXT lookup (mailauth's resolvePolicy, through
 * our DNS cache), the HTTPS policy fetch and MX matching (common's
 * mta-sts-policy.ts, shared with `postern dns check`), the policy parser
 * (mailauth's) and a policy cache on disk, in the spool's `mta-sts/`
 * directory (smtp's own account, 0700), so a policy survives restarts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { resolvePolicy, parsePolicy } from 'mailauth/lib/mta-sts';
import { MainConfig, sharedResolver, Logger, fetchStsPolicyText } from '@postern/common';

export interface StsPolicy {
  domain: string;
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  maxAge: number;
  /** ms since the epoch */
  fetched: number;
}

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
    const text = await fetchStsPolicyText(name, config, sharedResolver(config));
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
