/** Turning an SMTP/LMTP server's replies into per-recipient results. */

// one declaration of a recipient's result, shared with qmgr (common/ipc/protocol.ts)
export type { DeliveryResult } from '@postern/common';

/** The enhanced status code in a reply, or one derived from its basic code. */
export function dsnOf(response: string | undefined, code?: number): string {
  const m = /\b([245]\.\d{1,3}\.\d{1,3})\b/.exec(response ?? '');
  if (m) return m[1];
  const c = code ?? parseInt((response ?? '').slice(0, 3), 10);
  return c >= 500 ? '5.0.0' : c >= 400 ? '4.0.0' : c >= 200 && c < 300 ? '2.0.0' : '4.0.0';
}

export function oneLine(s: string | undefined): string {
  return (s ?? '').replace(/\s*[\r\n]+\s*/g, ' ').trim();
}
