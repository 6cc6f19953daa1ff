/**
 * No backscatter: mail we accepted from outside names a sender we have no
 * reason to believe. If it then cannot be delivered, a notification to that
 * sender goes, most of the time, to an innocent third party whose address a
 * spammer forged. So such a notification is sent only when the sender was
 * authenticated when the mail came in: SPF passed for the MAIL FROM domain,
 * or a DKIM signature passed that aligns with the From: domain (smtpd's
 * verdict, recorded in the queue file's envelope as `auth`). Mail from our
 * own users (authenticated, mynetworks, sendmail) is never affected.
 */
import { MainConfig, Envelope, NetworkList } from '@postern/common';

let networks: { spec: string; list: NetworkList } | undefined;

function mynetworks(config: MainConfig): NetworkList {
  const spec = config.get('mynetworks');
  if (!networks || networks.spec !== spec) networks = { spec, list: new NetworkList(config.list('mynetworks')) };
  return networks.list;
}

/** Mail accepted by smtpd from a client that is neither authenticated nor in mynetworks. */
export function fromOutside(env: Envelope, config: MainConfig): boolean {
  return env.origin === 'smtpd' && !env.sasl && !!env.client && !mynetworks(config).contains(env.client.address);
}

/**
 * Why no notification may go to this message's sender, or null when one may.
 * With smtpd_message_auth off there is no verdict, so nothing from outside
 * gets a notification: turn backscatter_protection off with it.
 */
export function backscatterReason(env: Envelope, config: MainConfig): string | null {
  if (!config.bool('backscatter_protection') || !fromOutside(env, config)) return null;
  if (env.auth?.spf === 'pass' || env.auth?.dkimAligned) return null;
  return 'sender not authenticated (backscatter protection)';
}
