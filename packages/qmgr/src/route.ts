/**
 * Which delivery agent handles which recipient: local domains go to the lmtp
 * client (which talks to `local`), everything else to smtp, one group per
 * destination domain (or one for all when a relayhost is set).
 */
import { MainConfig, splitAddress, localDomains } from '@postern/common';

export interface DeliveryGroup {
  /** Socket name under private/ of the delivery agent. */
  transport: string;
  /** For lmtp: the LMTP server's socket name; for smtp: the destination domain. */
  nexthop: string;
  concurrency: number;
  recipients: { index: number; address: string }[];
}

export function planDeliveries(recipients: { index: number; address: string }[], config: MainConfig): DeliveryGroup[] {
  const groups = new Map<string, DeliveryGroup>();
  const ours = localDomains(config);
  for (const r of recipients) {
    const { domain } = splitAddress(r.address);
    const local = ours.has(domain.toLowerCase());
    const transport = local ? 'lmtp' : 'smtp';
    const nexthop = local ? 'local' : domain;
    const key = `${transport}:${nexthop}`;
    let g = groups.get(key);
    if (!g) {
      g = { transport, nexthop, recipients: [], concurrency: config.int(local ? 'local_destination_concurrency_limit' : 'default_destination_concurrency_limit') };
      groups.set(key, g);
    }
    g.recipients.push(r);
  }
  return [...groups.values()];
}
