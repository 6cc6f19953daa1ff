/**
 * Which addresses a login may send as: Postfix's reject_sender_login_mismatch,
 * in one place. smtpd applies it to MAIL FROM; cleanup applies it to the
 * From: header of submitted mail before DKIM-signing it.
 */

/** An authenticated (SASL) login owns exactly its own address, compared case-blind. */
export function loginOwnsAddress(login: string, address: string): boolean {
  return login.toLowerCase() === address.toLowerCase();
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
