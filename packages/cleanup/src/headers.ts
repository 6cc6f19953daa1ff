/**
 * Header fields cleanup removes from mail as it arrives (HeaderSection drops
 * them). RFC 8601 section 5: an `Authentication-Results:` field that claims
 * our own authserv-id can only be a forgery (ours is added after this, by
 * smtpd's verdict), so a MUA that trusts our results must never see one that
 * came from outside.
 */
import { FieldPredicate } from './header-section.js';

/**
 * The authserv-id of an Authentication-Results value (RFC 8601 2.2): the
 * first token or quoted string, after any comments.
 */
export function authservId(value: string): string {
  let v = value.trimStart();
  while (v.startsWith('(')) {
    let depth = 0;
    let i = 0;
    for (; i < v.length; i++) {
      if (v[i] === '\\') { i++; continue; }
      if (v[i] === '(') depth++;
      else if (v[i] === ')' && --depth === 0) break;
    }
    v = v.slice(i + 1).trimStart();
  }
  const quoted = /^"((?:[^"\\]|\\.)*)"/.exec(v);
  if (quoted) return quoted[1].replace(/\\(.)/g, '$1');
  return /^[^\s;()]*/.exec(v)![0];
}

/** Drops Authentication-Results: fields whose authserv-id is our host name (compared case-blind, trailing dot ignored). */
export function forgedAuthResults(hostname: string): FieldPredicate {
  const ours = hostname.toLowerCase().replace(/\.$/, '');
  return (name, value) => name === 'authentication-results' && authservId(value).toLowerCase().replace(/\.$/, '') === ours;
}

/**
 * Fields only our own checks may set: spamd's verdict (X-Spam-*) and a DMARC
 * quarantine mark (X-Postern-Quarantine:). smtpd sends ours in the after-body
 * frame and they are written in front of the message (P records), so any in
 * the message's own header section came from outside, and go.
 */
export function incomingVerdicts(): FieldPredicate {
  return (name) => name.startsWith('x-spam-') || name === 'x-postern-quarantine';
}
