/**
 * Who an LMTP recipient is: the address checked as something that becomes a
 * path (no `/`, no leading `.`, no control characters, one `@`), then looked
 * up in the user table. Reads the user table only; writes nothing.
 */
import { UserTable, UserEntry, validateMailboxAddress, smtpError } from '@postern/common';

/** The user's entry, or an SMTP error saying why there is none. */
export function findUser(users: UserTable, address: string): UserEntry {
  const bad = validateMailboxAddress(address);
  if (bad) throw smtpError(550, '5.1.3', `<${address}>: bad address: ${bad}`);
  let entry: UserEntry | undefined;
  try { entry = users.lookup(address); } catch (e) {
    throw smtpError(451, '4.3.0', `user table unavailable: ${(e as Error).message}`);
  }
  if (!entry) throw smtpError(550, '5.1.1', `<${address}>: no such user`);
  return entry;
}
