/**
 * The MTA-STS policy fetch (RFC 8461 3.3) and MX matching (4.1), one for the
 * smtp client that applies policies and for `postern dns check` that checks
 * ours: GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt at the address the
 * given resolver returns, certificate checked against smtp_tls_CAfile (or the
 * system's CAs), port smtp_mta_sts_https_port, 200 and text/plain only, at most
 * 64 KiB, within smtp_mta_sts_fetch_timeout. mailauth's own fetch is fixed to
 * port 443 and the system CAs, and has no size limit or media type check.
 */
import * as fs from 'node:fs';
import * as https from 'node:https';
import type { MainConfig } from '../config/config.js';

export const MAX_STS_POLICY_BYTES = 64 * 1024;

/** The lookups the fetch needs: Postern's resolver (smtp's shared one, or the CLI's). */
export interface StsAddressResolver {
  resolveA(host: string): Promise<string[]>;
  resolveAAAA(host: string): Promise<string[]>;
}

const caByConfig = new WeakMap<MainConfig, Buffer | null>();

/**
 * smtp_tls_CAfile's PEM (null: not set, the system's CAs), the CAs MTA-STS
 * verifies with: read once per configuration load (a reload is a new
 * MainConfig). A file that cannot be read is not remembered: it is tried again
 * at the next use, so fixing it needs no reload.
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
export function stsMxMatches(host: string, patterns: string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return patterns.some((p0) => {
    const p = p0.toLowerCase().replace(/\.$/, '');
    if (!p.startsWith('*.')) return p === h;
    const dot = h.indexOf('.');
    return dot > 0 && h.slice(dot + 1) === p.slice(2);
  });
}

/** The policy text of `domain`; throws with the URL and what went wrong. */
export async function fetchStsPolicyText(domain: string, config: MainConfig, resolver: StsAddressResolver): Promise<string> {
  const host = `mta-sts.${domain}`;
  const url = `https://${host}/.well-known/mta-sts.txt`;
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
      if (res.statusCode !== 200) { res.resume(); return reject(new Error(`${url}: HTTP ${res.statusCode}`)); }
      if (!/^text\/plain\b/i.test(String(res.headers['content-type'] ?? ''))) {
        res.resume();
        return reject(new Error(`${url}: media type ${res.headers['content-type'] ?? 'missing'}, not text/plain`));
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_STS_POLICY_BYTES) { req.destroy(new Error(`${url}: larger than ${MAX_STS_POLICY_BYTES} bytes`)); return; }
        chunks.push(c);
      });
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within ${timeout} ms`)));
    req.on('error', (e) => reject(e.message.startsWith(url) ? e : new Error(`${url}: ${e.message}`)));
    req.end();
  });
}
