/**
 * `postern dkim keygen|list`: DKIM signing keys. keygen writes the private key
 * where only the queue owner (cleanup's user) can read it, registers it in the
 * signing table and prints the DNS record to publish.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateKeyPairSync, createPrivateKey, createPublicKey, KeyObject } from 'node:crypto';
import { Command, Option } from 'commander';
import {
  MainConfig, serviceAccounts, checkDkimDomain, checkDkimSelector, readDkimTable, upsertDkimTableEntry,
  replaceFileDurably, DkimAlgorithm,
} from '@postern/common';

export type KeyType = 'rsa' | 'ed25519';

/**
 * Default selector: the key type and the month it was made (`rsa-202611`,
 * `ed25519-202611`). A dated selector lets a key be rotated by publishing the
 * next one beside it; the type keeps an RSA and an Ed25519 key apart.
 */
export function defaultSelector(type: KeyType, now = new Date()): string {
  return `${type}-${now.getFullYear()}${String(now.getMonth() + 1).padStart(2, '0')}`;
}

/** The TXT record value (RFC 6376 3.6.1; RFC 8463: Ed25519 publishes the raw 32-byte key). */
export function dkimTxtValue(publicKey: KeyObject): string {
  if (publicKey.asymmetricKeyType === 'ed25519') {
    const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url');
    return `v=DKIM1; k=ed25519; p=${raw.toString('base64')}`;
  }
  if (publicKey.asymmetricKeyType === 'rsa') {
    return `v=DKIM1; k=rsa; p=${publicKey.export({ format: 'der', type: 'spki' }).toString('base64')}`;
  }
  throw new Error(`${publicKey.asymmetricKeyType} keys cannot be used for DKIM`);
}

/** A zone-file line; TXT character-strings hold at most 255 bytes, so longer values are split. */
export function zoneFileRecord(name: string, txt: string): string {
  const parts: string[] = [];
  for (let i = 0; i < txt.length; i += 255) parts.push(`"${txt.slice(i, i + 255)}"`);
  return `${name}. IN TXT ${parts.join(' ')}`;
}

export interface KeygenOptions { selector?: string; bits?: string; algorithm?: KeyType; force?: boolean }

export interface KeygenResult {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  bits?: number;
  key_file: string;
  table: string;
  table_action: 'added' | 'replaced' | 'not written';
  dns_name: string;
  txt: string;
}

export function dkimKeygen(config: MainConfig, domainArg: string, o: KeygenOptions): KeygenResult {
  const domain = domainArg.toLowerCase().replace(/\.$/, '');
  const type: KeyType = o.algorithm ?? 'rsa';
  const badDomain = checkDkimDomain(domain);
  if (badDomain) throw new Error(badDomain);
  const selector = o.selector ?? defaultSelector(type);
  const badSelector = checkDkimSelector(selector);
  if (badSelector) throw new Error(`--selector: ${badSelector}`);
  let bits: number | undefined;
  if (type === 'rsa') {
    bits = o.bits === undefined ? 2048 : Number(o.bits);
    // RFC 8301: at least 1024 bits, 2048 recommended; above 4096 many verifiers give up
    if (!Number.isInteger(bits) || bits < 1024 || bits > 4096) throw new Error(`--bits: "${o.bits}" is not a key size from 1024 to 4096`);
  } else if (o.bits !== undefined) {
    throw new Error('--bits applies to RSA keys only (Ed25519 keys have one size)');
  }

  const accounts = serviceAccounts(config);
  const owner = accounts.privileged ? { uid: accounts.owner.uid, gid: accounts.owner.gid } : undefined;
  const keyDir = config.get('dkim_key_directory');
  const table = config.get('dkim_signing_table');
  const keyFile = path.join(keyDir, `${domain}.${selector}.key`);
  if (fs.existsSync(keyFile) && !o.force) {
    throw new Error(`${keyFile} exists: its public key may be published and in use; choose another --selector or add --force`);
  }

  // the key directory: only the queue owner (cleanup) may enter it
  fs.mkdirSync(keyDir, { recursive: true, mode: 0o700 });
  if (owner) fs.chownSync(keyDir, owner.uid, owner.gid);
  fs.chmodSync(keyDir, 0o700);
  // a database signing table (pgsql:, sqlite:) is the administrator's to fill: the row is printed
  const inDatabase = /^[a-z][a-z0-9-]*:/.test(table);
  if (!inDatabase) fs.mkdirSync(path.dirname(table), { recursive: true, mode: 0o755 });

  const { privateKey, publicKey } = type === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: bits! })
    : generateKeyPairSync('ed25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
  replaceFileDurably(keyFile, pem, 0o600, owner);

  const algorithm: DkimAlgorithm = type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
  // the table is root's to change and the queue owner's to read
  const action = inDatabase ? 'not written'
    : upsertDkimTableEntry(table, { domain, selector, keyFile, algorithm }, owner ? { uid: 0, gid: owner.gid } : undefined);
  return {
    domain, selector, algorithm, bits, key_file: keyFile, table, table_action: action,
    dns_name: `${selector}._domainkey.${domain}`, txt: dkimTxtValue(publicKey),
  };
}

export interface KeyRow {
  domain: string;
  selector: string;
  algorithm: string;
  key_file: string;
  /** 'ok', or why the key cannot sign. */
  status: string;
  dns_name: string;
  /** The TXT value to publish, when the key is readable. */
  txt?: string;
}

export function dkimList(config: MainConfig): { rows: KeyRow[]; errors: string[] } {
  const table = readDkimTable(config.get('dkim_signing_table'));
  const rows = table.entries.map((e): KeyRow => {
    const row: KeyRow = { domain: e.domain, selector: e.selector, algorithm: e.algorithm ?? '-', key_file: e.keyFile,
      status: 'ok', dns_name: `${e.selector}._domainkey.${e.domain}` };
    try {
      const key = createPrivateKey(fs.readFileSync(e.keyFile));
      row.txt = dkimTxtValue(createPublicKey(key));
      const type = key.asymmetricKeyType === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256';
      if (e.algorithm && e.algorithm !== type) row.status = `key is ${key.asymmetricKeyType}, table says ${e.algorithm}`;
      if (row.algorithm === '-') row.algorithm = type;
    } catch (err) {
      row.status = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'key file missing'
        : (err as NodeJS.ErrnoException).code === 'EACCES' ? 'key file not readable (run as root)' : `bad key: ${(err as Error).message}`;
    }
    return row;
  });
  return { rows, errors: table.errors };
}

export function addDkimCommands(program: Command, configDir: () => string, fail: (msg: string) => void): void {
  const dkim = program.command('dkim').description('DKIM signing keys');
  dkim.command('keygen <domain>').description('make a signing key for DOMAIN, register it, print the DNS record to publish')
    .option('--selector <s>', 'selector (default: KEYTYPE-YYYYMM, e.g. rsa-202611)')
    .option('--bits <n>', 'RSA key size (default 2048)')
    .addOption(new Option('--algorithm <type>', 'key type').choices(['rsa', 'ed25519']).default('rsa'))
    .option('--force', 'replace an existing key file for this selector')
    .option('--json', 'print the result as one JSON object')
    .action((domain: string, o) => {
      let r: KeygenResult;
      try { r = dkimKeygen(MainConfig.load(configDir()), domain, o); } catch (e) { return fail((e as Error).message); }
      if (o.json) { console.log(JSON.stringify(r)); return; }
      console.log(`postern: wrote ${r.key_file} (${r.bits ? `rsa, ${r.bits} bits` : 'ed25519'})`);
      if (r.table_action === 'not written') console.log(`postern: ${r.table} is a database table: give ${r.domain} the value "${r.selector} ${r.key_file} ${r.algorithm}"`);
      else console.log(`postern: ${r.table_action} "${r.domain} ${r.selector}" in ${r.table}`);
      console.log(`postern: publish this DNS record; mail from ${r.domain} is signed with it from now on:`);
      console.log(zoneFileRecord(r.dns_name, r.txt));
    });
  dkim.command('list').description('the signing table: domain, selector, algorithm, key file, status')
    .option('--json', 'one JSON object per key, with its DNS record')
    .action((o) => {
      let out: ReturnType<typeof dkimList>;
      try { out = dkimList(MainConfig.load(configDir())); } catch (e) { return fail((e as Error).message); }
      for (const err of out.errors) process.stderr.write(`postern: warning: ${err}\n`);
      for (const r of out.rows) {
        console.log(o.json ? JSON.stringify(r)
          : `${r.domain.padEnd(24)} ${r.selector.padEnd(16)} ${r.algorithm.padEnd(15)} ${r.key_file}${r.status === 'ok' ? '' : `  (${r.status})`}`);
      }
      if (out.errors.length) fail(`${out.errors.length} line(s) of the signing table are ignored`);
    });
}
