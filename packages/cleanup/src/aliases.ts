/**
 * Alias expansion, done here as Postfix's cleanup does virtual aliasing:
 * before the envelope is written, each recipient is replaced by the addresses
 * its aliases lead to, each remembering the original as its ORCPT (for DSNs).
 * A recipient that cannot be expanded (a loop, the limits, no deliverable
 * target) stays in the envelope already bounced, so qmgr returns it to the
 * sender with the reason; the rest of the message is delivered.
 */
import { AliasMaps, Logger, Recipient, StatusRecord } from '@postern/common';

export interface ExpandedRecipients {
  recipients: Recipient[];
  /** Results known now (the bounced ones), by index into `recipients`. */
  statuses: StatusRecord[];
}

export async function expandRecipients(original: Recipient[], maps: AliasMaps, log: Logger, queueId: string): Promise<ExpandedRecipients> {
  const recipients: Recipient[] = [];
  const statuses: StatusRecord[] = [];
  const seen = new Set<string>();
  const deliver = (r: Recipient) => {
    const key = r.address.toLowerCase();
    if (seen.has(key)) return; // one copy per address, however many aliases lead there
    seen.add(key);
    recipients.push(r);
  };
  for (const r of original) {
    const expansion = await maps.expand(r.address);
    if (!expansion.expanded) { deliver(r); continue; }
    const orcpt = r.orcpt ?? r.address;
    const carry = r.notify ? { notify: r.notify } : {};
    for (const address of expansion.addresses) deliver({ address, orcpt, ...carry });
    if (expansion.addresses.length) {
      log.info({ queue_id: queueId, orig_to: `<${r.address}>`, to: expansion.addresses.map((a) => `<${a}>`).join(','), nrcpt: expansion.addresses.length }, 'alias expanded');
    }
    for (const f of expansion.failures) {
      statuses.push({ type: 'rcpt', index: recipients.length, status: 'bounced', dsn: f.dsn, reason: f.reason, at: Date.now() });
      recipients.push({ address: f.address, orcpt, ...carry });
      log.warn({ queue_id: queueId, to: `<${f.address}>`, orig_to: `<${r.address}>`, dsn: f.dsn, status: 'bounced' }, f.reason);
    }
  }
  return { recipients, statuses };
}
