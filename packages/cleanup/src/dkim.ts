/**
 * DKIM signing of submitted mail (RFC 6376; Ed25519 per RFC 8463). The signing
 * domain is the From: header's, the identity DMARC aligns on; the signing table
 * (dkim_signing_table) says which keys sign for it. The signature is computed
 * over the message exactly as it will be delivered (prepended headers and the
 * fixed-up message, re-read from the queue file just before commit) and stored
 * as a prepended header record. Signing never costs a message: a key that
 * cannot be used is logged and the message is queued without that signature.
 */
import * as fsp from 'node:fs/promises';
import { createPrivateKey } from 'node:crypto';
import { Readable } from 'node:stream';
import addressparser from 'nodemailer/lib/addressparser';
import { dkimSign } from 'mailauth/lib/dkim/sign';
import {
  Logger, Envelope, QueueFileWriter, DkimTableEntry, DkimAlgorithm, parseDkimTable, domainOf, openTable, TableUnavailable, WatchedFile,
} from '@postern/common';
import * as path from 'node:path';
import { HeaderSummary } from './header-section.js';

export interface SigningKey {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  keyFile: string;
  /** PEM, as mailauth wants it. */
  pem: Buffer;
}

/**
 * The domain to sign for: the first address of the From: header (DMARC's
 * identity); without a usable From:, the envelope sender's domain.
 */
export function signingDomain(summary: HeaderSummary | null, sender: string): string | null {
  for (const value of summary?.from ?? []) {
    const [first] = addressparser(value, { flatten: true });
    const domain = first?.address ? domainOf(first.address) : '';
    if (domain) return domain.replace(/\.$/, '');
  }
  const domain = domainOf(sender);
  return domain || null;
}

const fileSignature = (st: { ino: number; size: number; mtimeMs: number }) => `${st.ino}:${st.size}:${st.mtimeMs}`;

/**
 * The signing table and the private keys it names, each re-read only when its file changes.
 * The table file is checked at most once per `tableCheckIntervalMs` (a second, as the other
 * file tables: WatchedFile), not per message: a stat of it for every submitted message, absent
 * and answering ENOENT as an exception through the thread pool, was ≈ 12 % of cleanup's time.
 * A table written while running signs from the next check on.
 */
export class DkimKeyStore {
  private table: WatchedFile<DkimTableEntry[]> | null = null;
  private keys = new Map<string, { sig: string; pem: Buffer; type: 'rsa' | 'ed25519' }>();

  constructor(private readonly log: Logger, private readonly tableCheckIntervalMs = 1000) {}

  private entries(file: string): DkimTableEntry[] {
    if (this.table?.file !== file) {
      this.table = new WatchedFile(file, (text, f) => {
        const parsed = parseDkimTable(text, f);
        for (const err of parsed.errors) this.log.error({ table: f, err }, 'DKIM signing table: line ignored');
        return parsed.entries;
      }, { minCheckIntervalMs: this.tableCheckIntervalMs, missing: () => [], readError: `${file}: cannot read` }); // missing: DKIM not configured
    }
    try {
      return this.table.get();
    } catch (e) {
      // an unreadable table file is logged and the message queued unsigned, as before:
      // TableUnavailable (refuse for now) is for the lookup tables (pgsql:, ...)
      throw new Error((e as Error).message);
    }
  }

  /** A private key file, parsed once per version of the file. */
  private async readKey(keyFile: string): Promise<{ pem: Buffer; type: 'rsa' | 'ed25519' }> {
    const sig = fileSignature(await fsp.stat(keyFile));
    const cached = this.keys.get(keyFile);
    if (cached?.sig === sig) return cached;
    this.keys.delete(keyFile);
    const pem = await fsp.readFile(keyFile);
    const key = createPrivateKey({ key: pem, format: 'pem' });
    const type = key.asymmetricKeyType;
    if (type !== 'rsa' && type !== 'ed25519') throw new Error(`${type} keys cannot sign DKIM (rsa or ed25519)`);
    // RFC 8301: verifiers reject RSA keys under 1024 bits
    if (type === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 1024) throw new Error('RSA key shorter than 1024 bits');
    const loaded = { sig, pem, type } as const;
    this.keys.set(keyFile, loaded);
    return loaded;
  }

  private async load(entry: DkimTableEntry): Promise<SigningKey> {
    const { pem, type } = await this.readKey(entry.keyFile);
    const algorithm: DkimAlgorithm = type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
    if (entry.algorithm && entry.algorithm !== algorithm) throw new Error(`the key is ${type} but the table says ${entry.algorithm}`);
    return { domain: entry.domain, selector: entry.selector, algorithm, keyFile: entry.keyFile, pem };
  }

  /**
   * A `type:source` signing table (pgsql:, sqlite:, texthash:): the domain is the key, the
   * value "selector keyfile [algorithm]", several signatures separated by commas (one per
   * row of an SQL table). A relative keyfile is in keyDir (dkim_key_directory). A table that
   * cannot answer rejects with TableUnavailable: the message is refused for now, not sent unsigned.
   */
  private async tableEntries(spec: string, domain: string, keyDir: string): Promise<DkimTableEntry[]> {
    const value = await openTable(spec, 'dkim_signing_table')!.lookup(domain);
    if (value === undefined) return [];
    const text = value.split(',').map((v) => `${domain} ${v.trim()}`).join('\n');
    const parsed = parseDkimTable(text, path.join(keyDir, spec));
    for (const err of parsed.errors) this.log.error({ table: spec, dkim_domain: domain, err }, 'DKIM signing table: entry ignored');
    return parsed.entries;
  }

  /** The usable keys for a domain, in table order; each unusable one is logged with the queue id. */
  async keysFor(tableFile: string, domain: string, queueId: string, keyDir = ''): Promise<SigningKey[]> {
    const out: SigningKey[] = [];
    const entries = /^[a-z][a-z0-9-]*:/.test(tableFile) ? await this.tableEntries(tableFile, domain, keyDir) : this.entries(tableFile);
    for (const entry of entries.filter((e) => e.domain === domain)) {
      try {
        out.push(await this.load(entry));
      } catch (e) {
        this.log.warn({ queue_id: queueId, dkim_domain: domain, selector: entry.selector, key_file: entry.keyFile,
          err: (e as Error).message }, 'DKIM key unusable; not signing with it');
      }
    }
    return out;
  }
}

/** DKIM-Signature fields (CRLF-terminated) for the message as it will be delivered. */
export async function dkimSignatures(message: Readable, keys: SigningKey[]): Promise<{ headers: string; errors: string[] }> {
  const result = await dkimSign(message, {
    canonicalization: 'relaxed/relaxed',
    signatureData: keys.map((k) => ({
      signingDomain: k.domain, selector: k.selector, privateKey: k.pem, algorithm: k.algorithm, canonicalization: 'relaxed/relaxed',
    })),
    // mailauth's default header list: From, Sender, Reply-To, Subject, Date, Message-ID, To, Cc,
    // MIME-Version, Content-*, Resent-*, In-Reply-To, References, List-*
  } as any);
  const errors = ((result.errors ?? []) as any[]).map((e) => `s=${e.selector} d=${e.signingDomain}: ${e.err?.message ?? e.err}`);
  const headers = result.signatures.trim() ? result.signatures.replace(/(?:\r\n)+$/, '') + '\r\n' : '';
  return { headers, errors };
}

/**
 * Sign a submitted message about to be committed, if its domain has keys.
 * Throws only TableUnavailable (a signing table that cannot answer now): the
 * message is then refused with 451 4.3.0 and retried, as Postfix's cleanup does
 * on a table error, rather than sent unsigned; anything else is logged and the
 * message is queued.
 */
export async function signQueuedMessage(file: QueueFileWriter, env: Envelope, summary: HeaderSummary | null,
  tableFile: string, store: DkimKeyStore, log: Logger, keyDir = ''): Promise<void> {
  try {
    const domain = signingDomain(summary, env.sender);
    if (!domain) return;
    const keys = await store.keysFor(tableFile, domain, env.id, keyDir);
    if (!keys.length) return;
    let input = file.openMessage();
    if (summary && !summary.hasSeparator) {
      // a header-only message: the signer (like any verifier) needs the end of the header section
      const tail = Buffer.from(summary.endsWithNewline ? '\r\n' : '\r\n\r\n');
      const body = input;
      input = Readable.from((async function* () { for await (const c of body) yield c as Buffer; yield tail; })());
    }
    const { headers, errors } = await dkimSignatures(input, keys);
    for (const err of errors) log.error({ queue_id: env.id, dkim_domain: domain, err }, 'DKIM signing failed for one key');
    if (!headers) return;
    file.addPrependedHeaders(Buffer.from(headers));
    const signed = keys.filter((k) => !errors.some((e) => e.startsWith(`s=${k.selector} `)));
    log.info({ queue_id: env.id, dkim_domain: domain, selectors: signed.map((k) => `${k.selector}(${k.algorithm})`).join(',') },
      'DKIM-Signature added');
  } catch (e) {
    if (e instanceof TableUnavailable) throw e;
    log.error({ queue_id: env.id, err: (e as Error).message }, 'DKIM signing failed; message queued unsigned');
  }
}
