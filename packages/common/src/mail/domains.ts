/**
 * The domains delivered here (mydestination, virtual_mailbox_domains) as
 * Postfix reads a domain list: each entry is a name, or a `type:source` table
 * in which the domain is looked up (any value means "listed"), so domains can
 * live in PostgreSQL or SQLite (docs/tables.md). Names are answered first, so
 * a database that is down only matters for domains no name covers. A table
 * that cannot answer rejects with TableUnavailable: smtpd answers 451 4.3.0,
 * qmgr defers, never a 5xx.
 */
import { openTable } from '../tables/registry.js';
import { Table } from '../tables/types.js';

const TABLE_ENTRY = /^[a-z][a-z0-9-]*:/;

export class DomainList {
  /** The names written in the list, lower case, without a trailing dot. */
  readonly names: Set<string>;
  private readonly tables: Table[];

  constructor(entries: string[], param: string) {
    this.names = new Set(entries.filter((e) => !TABLE_ENTRY.test(e)).map((d) => d.toLowerCase().replace(/\.$/, '')));
    this.tables = entries.filter((e) => TABLE_ENTRY.test(e)).map((e) => openTable(e, param)!);
  }

  /** Is the domain listed? Rejects with TableUnavailable when a table it must ask cannot answer. */
  async has(domain: string): Promise<boolean> {
    const d = domain.toLowerCase().replace(/\.$/, '');
    if (!d) return false;
    if (this.names.has(d)) return true;
    for (const t of this.tables) if ((await t.lookup(d)) !== undefined) return true;
    return false;
  }
}

/** Which of our lists a domain is in: mydestination first, as Postfix (a domain in both is a local domain). */
export class LocalDomains {
  readonly mydestination: DomainList;
  readonly virtual: DomainList;

  constructor(config: { list(name: string): string[] }) {
    this.mydestination = new DomainList(config.list('mydestination'), 'mydestination');
    this.virtual = new DomainList(config.list('virtual_mailbox_domains'), 'virtual_mailbox_domains');
  }

  /** 'mydestination', 'virtual' or null (not ours). Rejects with TableUnavailable. */
  async classOf(domain: string): Promise<'mydestination' | 'virtual' | null> {
    // names of both lists before any table, so a database down costs nothing for named domains
    const d = domain.toLowerCase().replace(/\.$/, '');
    if (this.mydestination.names.has(d)) return 'mydestination';
    if (this.virtual.names.has(d)) return 'virtual';
    if (await this.mydestination.has(d)) return 'mydestination';
    if (await this.virtual.has(d)) return 'virtual';
    return null;
  }

  async has(domain: string): Promise<boolean> {
    return (await this.classOf(domain)) !== null;
  }
}
