/**
 * `texthash:FILE`: a text file of `key value` lines (Postfix's texthash),
 * read into memory and re-read when it changes. `#` starts a comment line; an
 * indented line continues the previous value; keys compare case-insensitively.
 */
import * as path from 'node:path';
import { Table, TableBackend, TableUnavailable } from './types.js';
import { WatchedFile } from './watched-file.js';

/** The table's entries; a malformed line throws `FILE:LINE: problem`. */
export function parseTexthash(text: string, file: string): Map<string, string> {
  const map = new Map<string, string>();
  const lines = text.split('\n');
  let last: string | null = null;
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (/^\s*(#|$)/.test(line)) return;
    if (/^\s/.test(line)) {
      // continuation of the previous value, as in Postfix tables
      if (last === null) throw new TableUnavailable(`${path.basename(file)}:${i + 1}: continuation line without an entry`);
      map.set(last, `${map.get(last)} ${line.trim()}`);
      return;
    }
    const m = /^(\S+)\s+(.*\S)\s*$/.exec(line);
    if (!m) throw new TableUnavailable(`${path.basename(file)}:${i + 1}: expected "key value", found "${line.slice(0, 60)}"`);
    last = m[1].toLowerCase();
    map.set(last, m[2]);
  });
  return map;
}

class TexthashTable implements Table {
  private readonly map: WatchedFile<Map<string, string>>;

  constructor(readonly spec: string, file: string) {
    this.map = new WatchedFile(file, parseTexthash, { readError: `${spec}: cannot read` });
  }

  async lookup(key: string): Promise<string | undefined> {
    return this.map.get().get(key.toLowerCase());
  }

  async keys(): Promise<string[]> {
    return [...this.map.get().keys()];
  }
}

export const texthash: TableBackend = {
  type: 'texthash',
  open: (source, spec) => new TexthashTable(spec, source),
};
