/**
 * Checks that need the whole message (message authentication, spam
 * filtering). Each observer sees the message bytes as smtpd streams them to
 * cleanup, and at the end gives a verdict: reject, or headers to add and
 * envelope notes to record. An observer must never hold up or lose a message
 * because something it depends on is down: it then passes, and logs.
 */
import type { CheckContext, MessageObserver } from './observer.js';
import { createMessageAuth } from './message-auth.js';
import { createSpamCheck } from './spamd.js';

export type { CheckContext, MessageObserver, ObserverVerdict } from './observer.js';

/**
 * The observers for one message from outside, in the order their headers go
 * in front of it: message authentication (smtpd_message_auth), then spamd
 * (spamd_address). Trusted clients (mynetworks, authenticated: submission)
 * get none: their mail is ours to sign, not to judge, as with Postfix and a
 * content filter on the MX path only.
 */
export function createMessageObservers(c: CheckContext): MessageObserver[] {
  if (c.trusted) return [];
  const observers: MessageObserver[] = [];
  const add = (what: string, make: () => MessageObserver | null) => {
    // a check that cannot even start (say, a bad dns_servers) is skipped, never a reason to refuse mail
    try { const o = make(); if (o) observers.push(o); } catch (e) {
      c.log.error({ err: (e as Error).message }, `${what} unavailable; message passes unchecked`);
    }
  };
  if (c.config.bool('smtpd_message_auth')) add('message authentication', () => createMessageAuth(c));
  add('spam check', () => createSpamCheck(c));
  return observers;
}
