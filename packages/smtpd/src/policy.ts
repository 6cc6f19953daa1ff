/**
 * smtpd's policy: what main.cf says about who may send what to whom, built
 * once at start and again at each reload. Sessions read the policy in force
 * when they ask; nothing here holds a connection.
 */
import {
  MainConfig, NetworkList, UserDb, userDbOf, LocalDomains, AliasMaps, SenderLogins,
} from '@postern/common';
import { RestrictionPolicy, restrictionPolicy } from './restrictions.js';

export interface Policy {
  hostname: string;
  /** mydestination and virtual_mailbox_domains: names, and tables asked at RCPT. */
  localDomains: LocalDomains;
  /** smtpd_sender_login_maps (reject_sender_login_mismatch). */
  senderLogins: SenderLogins;
  mynetworks: NetworkList;
  users: UserDb;
  recipientLimit: number;
  sizeLimit: number;
  restrictions: RestrictionPolicy;
  config: MainConfig;
  /** Opened at the first lookup: a missing table is a temporary failure then, not a crash. */
  aliases?: AliasMaps;
}

export function buildPolicy(config: MainConfig): Policy {
  const mynetworks = new NetworkList(config.list('mynetworks'));
  const domains = new LocalDomains(config);
  return {
    hostname: config.get('myhostname'),
    localDomains: domains,
    senderLogins: new SenderLogins(config),
    mynetworks,
    restrictions: restrictionPolicy(config, mynetworks, domains),
    users: userDbOf(config), // one per spec and process: a reload keeps it
    recipientLimit: config.int('smtpd_recipient_limit'),
    sizeLimit: config.int('message_size_limit'),
    config,
  };
}

/** An address in our domains exists when it is a user, an alias, or postmaster@/abuse@ (aliases.ts). */
export async function knownRecipient(policy: Policy, address: string): Promise<boolean> {
  if (await policy.users.exists(address)) return true;
  policy.aliases ??= new AliasMaps(policy.config);
  return policy.aliases.accepts(address);
}
