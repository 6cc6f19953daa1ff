/**
 * Lookup tables named `type:source`, as in Postfix. One interface, so a new
 * backend (sqlite:, pgsql:) is a new class here, not a change to its users.
 * `texthash:` is a text file of `key value` lines, read into memory and
 * re-read when the file changes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface LookupTable {
  readonly spec: string;
  /** The value for key (keys are compared case-insensitively), or undefined. */
  lookup(key: string): string | undefined;
  /** Every key, for listing and checks. */
  keys(): string[];
}

export class TableError extends Error {}

export function parseTexthash(text: string, file: string): Map<string, string> {
  const map = new Map<string, string>();
  const lines = text.split('\n');
  let last: string | null = null;
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (/^\s*(#|$)/.test(line)) return;
    if (/^\s/.test(line)) {
      // continuation of the previous value, as in Postfix tables
      if (last === null) throw new TableError(`${path.basename(file)}:${i + 1}: continuation line without an entry`);
      map.set(last, `${map.get(last)} ${line.trim()}`);
      return;
    }
    const m = /^(\S+)\s+(.*\S)\s*$/.exec(line);
    if (!m) throw new TableError(`${path.basename(file)}:${i + 1}: expected "key value", found "${line.slice(0, 60)}"`);
    last = m[1].toLowerCase();
    map.set(last, m[2]);
  });
  return map;
}

class TexthashTable implements LookupTable {
  private map = new Map<string, string>();
  private signature = '';
  private checked = 0;

  constructor(readonly spec: string, private file: string) {
    this.refresh(true);
  }

  private refresh(force = false): void {
    const now = Date.now();
    if (!force && now - this.checked < 1000) return;
    this.checked = now;
    let st: fs.Stats;
    try { st = fs.statSync(this.file); } catch (e) {
      throw new TableError(`${this.spec}: cannot read: ${(e as Error).message}`);
    }
    const sig = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (sig === this.signature) return;
    this.map = parseTexthash(fs.readFileSync(this.file, 'utf8'), this.file);
    this.signature = sig;
  }

  lookup(key: string): string | undefined {
    this.refresh();
    return this.map.get(key.toLowerCase());
  }

  keys(): string[] {
    this.refresh();
    return [...this.map.keys()];
  }
}

const cache = new Map<string, LookupTable>();

/** Open (once per process) the table a parameter names; '' gives null. */
export function openTable(spec: string): LookupTable | null {
  if (!spec) return null;
  const hit = cache.get(spec);
  if (hit) return hit;
  const m = /^([a-z-]+):(.+)$/.exec(spec);
  if (!m) throw new TableError(`"${spec}" is not a lookup table (type:source)`);
  let t: LookupTable;
  switch (m[1]) {
    case 'texthash': t = new TexthashTable(spec, m[2]); break;
    default: throw new TableError(`${spec}: unsupported table type "${m[1]}" (texthash)`);
  }
  cache.set(spec, t);
  return t;
}
