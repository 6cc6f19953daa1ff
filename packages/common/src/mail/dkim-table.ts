/**
 * The DKIM signing table (dkim_signing_table): which key signs mail from which
 * domain. One line per signature:
 *
 *   domain  selector  keyfile  [rsa-sha256 | ed25519-sha256]
 *
 * Several lines for one domain give several signatures, in table order (RSA
 * first, then Ed25519, as RFC 8463 suggests). A relative keyfile is relative to
 * the table's directory. `#` starts a comment. cleanup reads the table,
 * `postern dkim keygen` writes it; this module is the format both share.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { replaceFileDurably } from '../util/files.js';

export const DKIM_ALGORITHMS = ['rsa-sha256', 'ed25519-sha256'] as const;
export type DkimAlgorithm = typeof DKIM_ALGORITHMS[number];

export interface DkimTableEntry {
  /** Lower case, without a trailing dot. */
  domain: string;
  selector: string;
  /** Absolute path of the PEM private key. */
  keyFile: string;
  /** As written; when absent the key's type decides. */
  algorithm?: DkimAlgorithm;
  line: number;
}

export interface DkimTable {
  entries: DkimTableEntry[];
  /** `signing.table:7: ...` for each line that was skipped. */
  errors: string[];
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const DOMAIN_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})+$`);
// a selector is one or more DNS labels (RFC 6376 3.1); underscores appear in the wild
const SELECTOR_RE = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/i;

/** Why a signing domain is unusable, or null. */
export function checkDkimDomain(domain: string): string | null {
  return DOMAIN_RE.test(domain.toLowerCase()) && domain.length <= 253 ? null : `"${domain}" is not a domain name`;
}

/** Why a selector is unusable, or null. */
export function checkDkimSelector(selector: string): string | null {
  return SELECTOR_RE.test(selector) ? null : `"${selector}" is not a DKIM selector (DNS labels: letters, digits, hyphens)`;
}

export function parseDkimTable(text: string, file: string): DkimTable {
  const entries: DkimTableEntry[] = [];
  const errors: string[] = [];
  const dir = path.dirname(file);
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) return;
    const where = `${path.basename(file)}:${i + 1}`;
    const f = line.split(/\s+/);
    if (f.length < 3 || f.length > 4) {
      errors.push(`${where}: expected "domain selector keyfile [algorithm]", found "${line.slice(0, 80)}"`);
      return;
    }
    const domain = f[0].toLowerCase().replace(/\.$/, '');
    const problem = checkDkimDomain(domain) ?? checkDkimSelector(f[1]);
    if (problem) { errors.push(`${where}: ${problem}`); return; }
    const algorithm = f[3]?.toLowerCase();
    if (algorithm !== undefined && !(DKIM_ALGORITHMS as readonly string[]).includes(algorithm)) {
      errors.push(`${where}: "${f[3]}" is not one of ${DKIM_ALGORITHMS.join(', ')}`);
      return;
    }
    entries.push({ domain, selector: f[1], keyFile: path.resolve(dir, f[2]), algorithm: algorithm as DkimAlgorithm | undefined, line: i + 1 });
  });
  return { entries, errors };
}

/** The table at `file`; a missing file is an empty table (DKIM not configured). */
export function readDkimTable(file: string): DkimTable {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], errors: [] };
    throw new Error(`${file}: cannot read: ${(e as Error).message}`);
  }
  return parseDkimTable(text, file);
}

export function formatDkimTableLine(e: Omit<DkimTableEntry, 'line'>): string {
  return [e.domain, e.selector, e.keyFile, ...(e.algorithm ? [e.algorithm] : [])].join(' ');
}

/**
 * Add an entry, replacing the line for the same domain and selector if there is
 * one; every other line and comment stays as written. The file is replaced
 * atomically (temp file, fsync, rename, fsync the directory).
 */
export function upsertDkimTableEntry(file: string, entry: Omit<DkimTableEntry, 'line'>,
  owner?: { uid: number; gid: number }): 'added' | 'replaced' {
  let lines: string[] = [];
  try { lines = fs.readFileSync(file, 'utf8').split('\n'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    lines = ['# DKIM signing table: domain selector keyfile [rsa-sha256|ed25519-sha256]', '# Written by "postern dkim keygen"; one line per signature.', ''];
  }
  if (lines[lines.length - 1] === '') lines.pop();
  const text = formatDkimTableLine(entry);
  const { entries } = parseDkimTable(lines.join('\n'), file);
  const same = entries.find((e) => e.domain === entry.domain && e.selector.toLowerCase() === entry.selector.toLowerCase());
  if (same) lines[same.line - 1] = text;
  else lines.push(text);
  replaceFileDurably(file, lines.join('\n') + '\n', 0o640, owner);
  return same ? 'replaced' : 'added';
}

