/**
 * Message fix-up for submitted mail, as Postfix's cleanup does it: the header
 * fields a message must have (Message-ID:, Date:) and are missing. HeaderSection
 * adds them at the end of the primary header section.
 */
import { HeaderSummary } from './header-section.js';

const two = (n: number) => String(n).padStart(2, '0');

/** Postfix's form: <YYYYMMDDhhmmss.QUEUEID@myhostname>, the time in UTC. */
export function makeMessageId(queueId: string, arrival: Date, hostname: string): string {
  const d = arrival;
  const stamp = `${d.getUTCFullYear()}${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}`;
  return `<${stamp}.${queueId}@${hostname}>`;
}

/**
 * Postfix's rule: a message with Resent- fields is being re-sent, so what must
 * be there is Resent-Message-ID: and Resent-Date:, not the originals.
 */
export function missingHeaders(s: HeaderSummary, queueId: string, arrival: Date, hostname: string, date: string): string[] {
  const resent = [...s.names].some((n) => n.startsWith('resent-')) ? 'Resent-' : '';
  const out: string[] = [];
  if (!s.names.has(`${resent.toLowerCase()}message-id`)) out.push(`${resent}Message-ID: ${makeMessageId(queueId, arrival, hostname)}`);
  if (!s.names.has(`${resent.toLowerCase()}date`)) out.push(`${resent}Date: ${date}`);
  return out;
}
