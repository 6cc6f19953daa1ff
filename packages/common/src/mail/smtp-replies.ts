/**
 * SMTP replies with their enhanced status codes (RFC 3463).
 *
 * smtp-server derives the enhanced code of an application's error from the
 * reply code alone (every 554 becomes 5.6.0), so a `554 5.7.1 Relay access
 * denied` cannot be expressed. `installEnhancedCodeShim` makes smtp-server
 * keep a text that already starts with an enhanced code as it is; `smtpError`
 * builds such errors. The same shim keeps AUTH out of EHLO before TLS and
 * turns smtp-server's non-standard 538 into RFC 3207's 530.
 */
import { createRequire } from 'node:module';

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
let installed = false;

export function installEnhancedCodeShim(): void {
  if (installed) return;
  installed = true;
  const req = createRequire(__filename);
  const { SMTPConnection } = req('smtp-server/lib/smtp-connection.js');
  const send = SMTPConnection.prototype.send;
  SMTPConnection.prototype.send = function (code: number, data: unknown, context?: unknown) {
    // 538 is not a standard reply; RFC 3207 clients expect 530 for "STARTTLS first"
    if (code === 538) return send.call(this, 530, '5.7.0 Must issue a STARTTLS command first', false);
    // MAIL ... REQUIRETLS without TLS: RFC 8689's "encryption needed" code (docs/smtpd.md)
    if (code === 530 && typeof data === 'string' && /^REQUIRETLS not permitted/.test(data)) return send.call(this, 530, '5.7.10 REQUIRETLS needs a TLS session', false);
    if (typeof data === 'string' && ENHANCED.test(data)) return send.call(this, code, data, false);
    // AUTH is offered only after TLS (Postfix's smtpd_tls_auth_only): smtp-server would list it before
    if (code === 250 && Array.isArray(data) && !this.secure && !this._server.options.allowInsecureAuth) {
      return send.call(this, code, data.filter((l: unknown) => !/^AUTH /.test(String(l))), context);
    }
    return send.call(this, code, data, context);
  };
}

export interface SmtpError extends Error { responseCode: number; enhanced: string }

/** An error smtp-server sends as `<code> <enhanced> <text>`. */
export function smtpError(code: number, enhanced: string, text: string): SmtpError {
  const e = new Error(`${enhanced} ${text}`) as SmtpError;
  e.responseCode = code;
  e.enhanced = enhanced;
  return e;
}
