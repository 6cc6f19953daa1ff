/**
 * Aliases: virtual_alias_maps, then alias_maps, as cleanup expands them and
 * smtpd accepts them. One entry per line, `address target, target...`:
 *
 *   user@domain   an address
 *   user          that name in every $mydestination domain
 *   @domain       every other name in the domain (a catch-all, as in Postfix:
 *                 it catches the domain's mailbox users too unless they have
 *                 an entry of their own, e.g. `alice@domain alice@domain`)
 *
 * A target without a domain gets @$myorigin. A target equal to the address it
 * expands is delivered as it is (`a@x a@x, b@x` keeps a copy for a@x).
 * postmaster@ and abuse@ of every local domain go to $postmaster_address unless
 * a table has an entry for them (RFC 5321 4.5.1 requires postmaster).
 */
import { MainConfig } from '../config/config.js';
import { splitAddress } from '../mail/address.js';
import { openTable } from './registry.js';
import type { Table } from './types.js';
import { LocalDomains } from '../mail/domains.js';

/** One matching entry: which table, which key form, and its targets as written. */
export interface AliasEntry {
  /** The table spec, or `postmaster_address` for the built-in postmaster/abuse rule. */
  table: string;
  key: string;
  targets: string[];
}

/** An address that cannot be expanded: it bounces with this status. */
export interface AliasFailure {
  address: string;
  dsn: string;
  reason: string;
}

export interface AliasExpansion {
  /** Final addresses, each once, in order of discovery; empty when nothing could be delivered. */
  addresses: string[];
  /** Addresses whose expansion failed (a loop, the limits, no usable target). */
  failures: AliasFailure[];
  /** Whether any entry applied: false means the original address stays as it is. */
  expanded: boolean;
}

const ROLE_ACCOUNTS = new Set(['postmaster', 'abuse']);

/** Targets we cannot deliver to: commands, files and include lists of /etc/aliases. */
const UNSUPPORTED_TARGET = /^(?:\||\/|:include:|")/i;
const ADDRESS = /^[^\s@<>(),;:"]+@[^\s@<>(),;:"]+$/;

export class AliasMaps {
  private readonly tables: Table[];
  /** Names and tables of mydestination and virtual_mailbox_domains (a table may be a database). */
  private readonly domains: LocalDomains;
  private readonly myorigin: string;
  private readonly postmaster: string;
  readonly recursionLimit: number;
  readonly expansionLimit: number;

  /**
   * Opens the tables (once per process); a bad spec throws TableError, and a lookup in a
   * table that cannot answer now (missing, malformed, a database down) TableUnavailable.
   */
  constructor(config: MainConfig) {
    this.tables = [
      ...config.list('virtual_alias_maps').map((s) => openTable(s, 'virtual_alias_maps')!),
      ...config.list('alias_maps').map((s) => openTable(s, 'alias_maps')!),
    ];
    this.domains = new LocalDomains(config);
    this.myorigin = config.get('myorigin').toLowerCase();
    this.postmaster = config.get('postmaster_address').trim().toLowerCase();
    this.recursionLimit = config.int('virtual_alias_recursion_limit');
    this.expansionLimit = config.int('virtual_alias_expansion_limit');
  }

  /** The entry that applies to an address, or undefined (then it is delivered as it is). */
  async lookup(address: string): Promise<AliasEntry | undefined> {
    const addr = address.toLowerCase();
    const { local, domain } = splitAddress(addr);
    const keys = [addr];
    if (await this.domains.mydestination.has(domain)) keys.push(local);
    if (domain) keys.push(`@${domain}`);
    for (const table of this.tables) {
      for (const key of keys) {
        const value = await table.lookup(key);
        if (value !== undefined) return { table: table.spec, key, targets: value.split(/[\s,]+/).filter(Boolean) };
      }
    }
    if (this.postmaster && ROLE_ACCOUNTS.has(local) && await this.domains.has(domain)) {
      return { table: 'postmaster_address', key: addr, targets: [this.postmaster] };
    }
    return undefined;
  }

  /** smtpd's question at RCPT: is this address an alias (or postmaster/abuse) we accept? */
  async accepts(address: string): Promise<boolean> {
    return (await this.lookup(address)) !== undefined;
  }

  /** A target as an address: a bare name gets @$myorigin; null for what cannot be delivered. */
  private qualify(target: string): string | null {
    const t = target.replace(/^<(.*)>$/, '$1').toLowerCase();
    if (UNSUPPORTED_TARGET.test(t)) return null;
    const full = t.includes('@') ? t : `${t}@${this.myorigin}`;
    return ADDRESS.test(full) ? full : null;
  }

  /**
   * Expands one recipient to the addresses to deliver to, depth first. A target
   * that leads back to an address on its own path is a loop: that address
   * fails (5.4.6) and the other branches are still delivered.
   */
  async expand(address: string): Promise<AliasExpansion> {
    const finals = new Set<string>();
    const failures = new Map<string, AliasFailure>();
    const done = new Set<string>();
    let expanded = false;
    let overLimit = false;
    const fail = (addr: string, dsn: string, reason: string) => { if (!failures.has(addr)) failures.set(addr, { address: addr, dsn, reason }); };

    const visit = async (addr: string, path: string[]): Promise<void> => {
      if (overLimit || done.has(addr)) return;
      if (path.length > this.recursionLimit) {
        fail(addr, '5.3.5', `alias nesting deeper than virtual_alias_recursion_limit (${this.recursionLimit}) at ${addr}`);
        return;
      }
      const entry = await this.lookup(addr);
      if (!entry) { finals.add(addr); done.add(addr); return; }
      expanded = true;
      let usable = 0;
      for (const raw of entry.targets) {
        const target = this.qualify(raw);
        if (!target) continue;
        usable++;
        if (target === addr) { finals.add(target); continue; }
        const loopAt = path.indexOf(target);
        if (loopAt >= 0) {
          fail(target, '5.4.6', `mail forwarding loop for ${target} (${[...path.slice(loopAt), addr, target].join(' -> ')})`);
          continue;
        }
        await visit(target, [...path, addr]);
        if (finals.size > this.expansionLimit) {
          overLimit = true;
          return;
        }
      }
      if (!usable) fail(addr, '5.3.5', `alias ${addr} in ${entry.table} has no deliverable target (${entry.targets.join(', ') || 'empty'})`);
      done.add(addr);
    };

    const start = address.toLowerCase();
    await visit(start, []);
    if (overLimit) {
      return { addresses: [], expanded: true,
        failures: [{ address: start, dsn: '5.3.5', reason: `alias expansion of ${start} exceeds virtual_alias_expansion_limit (${this.expansionLimit} addresses)` }] };
    }
    return { addresses: [...finals], failures: [...failures.values()], expanded };
  }

  /** Targets of an entry that cannot be delivered (for `postern check` and the log). */
  unsupportedTargets(entry: AliasEntry): string[] {
    return entry.targets.filter((t) => this.qualify(t) === null);
  }
}
