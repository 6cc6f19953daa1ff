/**
 * Which addresses a login may send as: Postfix's reject_sender_login_mismatch,
 * in one place. smtpd applies it to MAIL FROM; cleanup applies it to the
 * From: header of submitted mail before DKIM-signing it.
 */
import { openTable } from '../tables/registry.js';
import { Table } from '../tables/types.js';

/** An authenticated (SASL) login owns exactly its own address, compared case-blind. */
export function loginOwnsAddress(login: string, address: string): boolean {
  return login.toLowerCase() === address.toLowerCase();
}

/**
 * smtpd_sender_login_maps, as Postfix: the owners of an address are the logins
 * its table entry lists (comma or space separated), looked up as the address,
 * then `@domain`. A login always owns its own address too (Postern's rule
 * without the maps), so adding the maps only widens what a user may send as.
 * A table that cannot answer rejects with TableUnavailable: the caller answers
 * 451 4.3.0 (smtpd at MAIL, cleanup at the end of DATA), never a 5xx.
 */
export class SenderLogins {
  private readonly tables: Table[];

  constructor(config: { list(name: string): string[] }) {
    this.tables = config.list('smtpd_sender_login_maps').map((s) => openTable(s, 'smtpd_sender_login_maps')!);
  }

  async owns(login: string, address: string): Promise<boolean> {
    if (loginOwnsAddress(login, address)) return true;
    const addr = address.toLowerCase();
    const at = addr.lastIndexOf('@');
    const keys = at > 0 ? [addr, addr.slice(at)] : [addr];
    for (const key of keys) {
      for (const t of this.tables) {
        const owners = await t.lookup(key);
        if (owners !== undefined) return owners.split(/[\s,]+/).some((o) => o && loginOwnsAddress(login, o));
      }
    }
    return false;
  }
}

/**
 * A local user (sendmail, through pickup): root and the queue owner are trusted
 * with any address; anyone else owns login@$myorigin and login@$myhostname.
 */
export function localUserOwnsAddress(who: { uid: number; user: string; trusted: boolean },
  address: string, domains: { myorigin: string; myhostname: string }): boolean {
  if (who.trusted) return true;
  return [domains.myorigin, domains.myhostname].some((d) => loginOwnsAddress(`${who.user}@${d}`, address));
}
