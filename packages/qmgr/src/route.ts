/**
 * Which delivery agent handles which recipient: local domains go to the lmtp
 * client, to the LMTP server their transport names (`mailbox_transport` for
 * mydestination, `virtual_transport` for virtual_mailbox_domains: `local` is
 * Postern's own mailbox service, `lmtp:unix:…`/`lmtp:inet:…` another server
 * such as Dovecot); everything else to smtp, one group per destination domain
 * (or one for all when a relayhost is set).
 */
import { MainConfig, splitAddress, transportNexthop } from '@postern/common';

export interface DeliveryGroup {
  /** Socket name under private/ of the delivery agent. */
  transport: string;
  /** For lmtp: `local`, `unix:PATH` or `inet:HOST:PORT`; for smtp: the destination domain. */
  nexthop: string;
  concurrency: number;
  recipients: { index: number; address: string }[];
}

export function planDeliveries(recipients: { index: number; address: string }[], config: MainConfig): DeliveryGroup[] {
  const groups = new Map<string, DeliveryGroup>();
  // mydestination first, as Postfix: a domain in both lists is a local domain
  const mydestination = new Set(config.list('mydestination').map((d) => d.toLowerCase()));
  const virtual = new Set(config.list('virtual_mailbox_domains').map((d) => d.toLowerCase()));
  for (const r of recipients) {
    const domain = splitAddress(r.address).domain.toLowerCase();
    const param = mydestination.has(domain) ? 'mailbox_transport' : virtual.has(domain) ? 'virtual_transport' : null;
    const transport = param ? 'lmtp' : 'smtp';
    const nexthop = param ? transportNexthop(config.get(param)) : domain;
    const key = `${transport}:${nexthop}`;
    let g = groups.get(key);
    if (!g) {
      const limit = !param ? 'default_destination_concurrency_limit'
        : nexthop === 'local' ? 'local_destination_concurrency_limit' : 'lmtp_destination_concurrency_limit';
      g = { transport, nexthop, recipients: [], concurrency: config.int(limit) };
      groups.set(key, g);
    }
    g.recipients.push(r);
  }
  return [...groups.values()];
}
