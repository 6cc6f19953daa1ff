/**
 * Who an LMTP recipient is: the address checked as something that becomes a
 * path (no `/`, no leading `.`, no control characters, one `@`), then looked
 * up in the user database (userInfo). Reads the user table only; writes nothing.
 */
import { UserDb, UserInfo, validateMailboxAddress, smtpError } from '@postern/common';

/** The user's entry, or an SMTP error saying why there is none. */
export async function findUser(users: UserDb, address: string): Promise<UserInfo> {
  const bad = validateMailboxAddress(address);
  if (bad) throw smtpError(550, '5.1.3', `<${address}>: bad address: ${bad}`);
  let entry: UserInfo | undefined;
  try { entry = await users.userInfo(address); } catch (e) {
    throw smtpError(451, '4.3.0', `user table unavailable: ${(e as Error).message}`);
  }
  if (!entry) throw smtpError(550, '5.1.1', `<${address}>: no such user`);
  return entry;
}
