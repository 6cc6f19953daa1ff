/**
 * The DSN (RFC 3461) and REQUIRETLS (RFC 8689) parameters of MAIL and RCPT.
 * smtp-server parses them (xtext decoded; RET, NOTIFY and the ORCPT form
 * checked; duplicates refused with 501 5.5.4); what it leaves open is
 * checked here, and the values go to cleanup with the envelope.
 */
import { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import { smtpError, SmtpError } from '@postern/common';

/** RFC 3461 4.4: ENVID is at most 100 characters; printable ASCII without spaces once xtext is decoded. */
const ENVID = /^[\x21-\x7e]{1,100}$/;
/** RFC 3461 4.2: ORCPT=addr-type;xtext, at most 500 characters; the address part not empty. */
const ORCPT_MAX = 500;

/** What MAIL and RCPT take (smtp-server's extensions, and AUTH= that submission clients send); anything else is 555 5.5.4, as Postfix. */
const MAIL_PARAMS = new Set(['SIZE', 'BODY', 'SMTPUTF8', 'REQUIRETLS', 'RET', 'ENVID', 'AUTH']);
const RCPT_PARAMS = new Set(['NOTIFY', 'ORCPT']);

function unknownParam(address: SMTPServerAddress, known: Set<string>): SmtpError | null {
  const name = Object.keys((address as any).args || {}).find((k) => !known.has(k));
  // the name only: the client's value is not echoed
  return name === undefined ? null : smtpError(555, '5.5.4', `Unsupported option: ${name.slice(0, 40)}`);
}

/** The reply to a MAIL with an unknown parameter or an unusable ENVID, else null. */
export function mailParamError(address: SMTPServerAddress): SmtpError | null {
  const unknown = unknownParam(address, MAIL_PARAMS);
  if (unknown) return unknown;
  const envid = (address as any).args?.ENVID;
  if (typeof envid === 'string' && !ENVID.test(envid)) {
    return smtpError(501, '5.5.4', 'Error: bad ENVID parameter: at most 100 printable characters without spaces');
  }
  return null;
}

/** The reply to a RCPT with an unknown parameter or an unusable ORCPT, else null. */
export function rcptParamError(address: SMTPServerAddress): SmtpError | null {
  const unknown = unknownParam(address, RCPT_PARAMS);
  if (unknown) return unknown;
  const orcpt = (address as any).args?.ORCPT;
  if (typeof orcpt === 'string' && (orcpt.length > ORCPT_MAX || !/^[A-Za-z0-9-]+;\S/.test(orcpt))) {
    return smtpError(501, '5.5.4', 'Error: bad ORCPT parameter: addr-type;address of at most 500 characters');
  }
  return null;
}

type Notify = 'NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY';

/** One recipient's NOTIFY and ORCPT for cleanup, as smtp-server kept them. */
export function dsnOfRecipient(r: SMTPServerAddress): { notify?: Notify[]; orcpt?: string } {
  const dsn = (r as any).dsn as { notify?: string[]; orcpt?: string } | undefined;
  return {
    ...(dsn?.notify?.length ? { notify: dsn.notify as Notify[] } : {}),
    // the address type is case-insensitive (RFC 3461 4.2): one spelling in the queue file
    ...(dsn?.orcpt ? { orcpt: dsn.orcpt.replace(/^[^;]+;/, (t) => t.toLowerCase()) } : {}),
  };
}

/** The envelope's RET, ENVID and REQUIRETLS for cleanup. */
export function dsnOfMessage(session: SMTPServerSession): { dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string }; requireTls?: boolean } {
  const env = session.envelope as any;
  const ret = env.dsn?.ret === 'FULL' || env.dsn?.ret === 'HDRS' ? env.dsn.ret as 'FULL' | 'HDRS' : undefined;
  const envid = typeof env.dsn?.envid === 'string' && env.dsn.envid ? env.dsn.envid as string : undefined;
  return {
    ...(ret || envid ? { dsn: { ...(ret ? { ret } : {}), ...(envid ? { envid } : {}) } } : {}),
    // smtp-server takes REQUIRETLS only over TLS (530 5.7.10 otherwise)
    ...(env.requireTLS === true && session.secure ? { requireTls: true } : {}),
  };
}
