/**
 * The outbound TLS policy of one delivery (docs/tls-policy.md): which TLS a
 * host gets (none, may, encrypt, DANE, MTA-STS), how its certificate is
 * checked once the handshake is done, and the outcome recorded per delivery,
 * so a later REQUIRETLS can ask "was this over verified TLS?" (`verified`).
 */
import * as tls from 'node:tls';
import { X509Certificate, createHash } from 'node:crypto';
import { TlsaData } from '@postern/common';

/** What nodemailer is asked for: no TLS, STARTTLS when offered, or STARTTLS required. */
export type ConnectTls = 'none' | 'may' | 'encrypt';

/** Postfix's words for how far a TLS peer was checked. */
export type TlsTrust = 'Verified' | 'Trusted' | 'Untrusted' | 'Anonymous';

/** How one host is to be reached and checked. */
export interface HostPolicy {
  /** The policy that applies: the level, or the mechanism that raised it. */
  name: 'none' | 'may' | 'encrypt' | 'dane' | 'mta-sts';
  connect: ConnectTls;
  /** DANE: the usable TLSA records of this host. */
  tlsa?: TlsaData[];
  /** MTA-STS: the policy mode; the MX host name the certificate must match. */
  sts?: { mode: 'enforce' | 'testing'; domain: string };
  /** PEM of smtp_tls_CAfile (MTA-STS chain check), when set. */
  ca?: Buffer;
}

/** The TLS outcome of one delivery, carried in its results (and logged). */
export interface TlsOutcome {
  policy: HostPolicy['name'];
  /** STARTTLS was done. */
  tls: boolean;
  trust?: TlsTrust;
  /** The certificate was authenticated by DANE or by PKIX with the name checked (what REQUIRETLS needs). */
  verified: boolean;
  protocol?: string;
  cipher?: string;
  /** Why the check failed (the delivery was deferred, or went on under MTA-STS testing). */
  failure?: string;
}

/** RFC 7672 3.1: only DANE-TA(2) and DANE-EE(3), selectors 0/1, matching 0/1/2 are usable for SMTP. */
export function usableTlsa(records: TlsaData[]): TlsaData[] {
  return records.filter((r) => (r.usage === 2 || r.usage === 3) && (r.selector === 0 || r.selector === 1) &&
    r.matchingType <= 2 && (r.matchingType !== 1 || r.data.length === 32) && (r.matchingType !== 2 || r.data.length === 64));
}

function selected(cert: X509Certificate, selector: number): Buffer {
  return selector === 0 ? cert.raw : cert.publicKey.export({ type: 'spki', format: 'der' }) as Buffer;
}

function matches(cert: X509Certificate, r: TlsaData): boolean {
  const s = selected(cert, r.selector);
  const v = r.matchingType === 0 ? s : createHash(r.matchingType === 1 ? 'sha256' : 'sha512').update(s).digest();
  return v.equals(r.data);
}

/** The chain the peer presented, leaf first (Node builds it from the handshake; loops cut off). */
function peerChain(sock: tls.TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  let c: any = sock.getPeerCertificate(true);
  const seen = new Set<string>();
  while (c && c.raw && !seen.has(c.fingerprint256) && out.length < 10) {
    seen.add(c.fingerprint256);
    out.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  return out;
}

/**
 * RFC 7672 3.1: DANE-EE(3) matches the leaf, with no name or date check;
 * DANE-TA(2) matches a certificate of the presented chain that signed its way
 * down to the leaf, and the leaf must then name the host (RFC 7672 3.2.2).
 */
function daneCheck(chain: X509Certificate[], tlsa: TlsaData[], host: string): string | null {
  if (!chain.length) return 'no certificate presented';
  const leaf = chain[0];
  if (tlsa.some((r) => r.usage === 3 && matches(leaf, r))) return null;
  for (let i = 0; i < chain.length; i++) {
    if (!tlsa.some((r) => r.usage === 2 && matches(chain[i], r))) continue;
    let ok = true;
    for (let j = 0; j < i && ok; j++) ok = chain[j].checkIssued(chain[j + 1]) && chain[j].verify(chain[j + 1].publicKey);
    const now = Date.now();
    for (let j = 0; j < i && ok; j++) ok = Date.parse(chain[j].validFrom) <= now && now <= Date.parse(chain[j].validTo);
    if (!ok) continue;
    if (!leaf.checkHost(host, { wildcards: true, partialWildcards: false })) return `certificate does not name ${host}`;
    return null;
  }
  return 'no TLSA record matches the certificate';
}

/** After STARTTLS: check the peer as the host policy says; `failure` set when it did not pass. */
export function checkPeer(sock: tls.TLSSocket | undefined, hp: HostPolicy, host: string): TlsOutcome {
  if (!sock || typeof sock.getPeerCertificate !== 'function' || !sock.encrypted) return { policy: hp.name, tls: false, verified: false };
  const cipher = sock.getCipher?.();
  const base = { policy: hp.name, tls: true, protocol: sock.getProtocol?.() ?? undefined, cipher: cipher?.name };
  const chain = peerChain(sock);
  if (!chain.length) {
    const failure = hp.name === 'dane' || hp.name === 'mta-sts' ? 'the server presented no certificate' : undefined;
    return { ...base, trust: 'Anonymous', verified: false, failure };
  }
  if (hp.name === 'dane') {
    const why = daneCheck(chain, hp.tlsa ?? [], host);
    return why ? { ...base, trust: 'Untrusted', verified: false, failure: `DANE: ${why}` } : { ...base, trust: 'Verified', verified: true };
  }
  // PKIX: was the chain verified during the handshake (against smtp_tls_CAfile or the system's CAs), does it name the host?
  const chainOk = sock.authorized;
  const nameErr = tls.checkServerIdentity(host, sock.getPeerCertificate());
  const trust: TlsTrust = chainOk ? (nameErr ? 'Trusted' : 'Verified') : 'Untrusted';
  if (hp.name !== 'mta-sts') return { ...base, trust, verified: false };
  if (!chainOk) return { ...base, trust, verified: false, failure: `certificate does not verify: ${sock.authorizationError}` };
  if (nameErr) return { ...base, trust, verified: false, failure: `certificate does not match ${host}: ${nameErr.message}` };
  return { ...base, trust, verified: true };
}

/** Postfix's line: "Verified TLS connection established to host[addr]:port: TLSv1.3 with cipher ...". */
export function tlsLogLine(o: TlsOutcome, relay: string): string {
  return `${o.trust} TLS connection established to ${relay}: ${o.protocol ?? 'TLS'} with cipher ${o.cipher ?? 'unknown'}`;
}
