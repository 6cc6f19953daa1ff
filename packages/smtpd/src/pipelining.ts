/**
 * smtpd_forbid_unauth_pipelining (Postfix 3.9's default): a client that talks
 * before the greeting, or sends a command before the reply to the previous
 * one without having negotiated PIPELINING in an EHLO reply, is a spam engine
 * or an attack (SMTP smuggling relies on it), not a mail server. It gets
 * `554 5.5.0 Error: SMTP protocol synchronization` and is disconnected.
 *
 * smtp-server itself only refuses complete command lines sent before the
 * greeting. This guard watches each connection's plaintext socket ahead of
 * smtp-server's parser: input that arrives while the greeting or a reply is
 * still due, or a chunk holding more than one command, is the violation, as
 * Postfix decides by finding more input pending after a command. Message
 * content (DATA mode) is not commands. Once the EHLO reply with PIPELINING is
 * sent, or after STARTTLS (which needs EHLO first), the guard steps aside.
 */
import { SMTPServer, SMTPServerSession } from 'smtp-server';
import { onEachConnection } from './connections.js';

const LF = 0x0a;

/** `remoteAddress` is given apart: before the greeting smtp-server has not filled in the session yet. */
export type PipeliningViolation = (session: SMTPServerSession, remoteAddress: string, when: string, input: string) => void;

/** Installs the guard on every connection `server` accepts from now on. */
export function forbidUnauthPipelining(server: SMTPServer, onViolation: PipeliningViolation): void {
  onEachConnection(server, (conn) => guard(conn, conn._socket, onViolation));
}

function guard(conn: any, socket: any, onViolation: PipeliningViolation): void {
  let greeted = false;
  let negotiated = false;
  /** A complete command line arrived and no reply has been sent since. */
  let replyDue = false;
  let lastCommand = '';

  const send = conn.send;
  conn.send = function (code: number, data: unknown, context?: unknown) {
    if (!greeted) greeted = true;
    else if (code === 250 && Array.isArray(data) && data.some((l) => /^PIPELINING$/i.test(String(l)))) negotiated = true;
    replyDue = false;
    return send.call(this, code, data, context);
  };

  const onData = (chunk: Buffer) => {
    if (negotiated || conn._closing || conn._closed || conn._socket !== socket) { socket.removeListener('data', onData); return; }
    if (conn._upgrading || (conn._parser && conn._parser._dataMode)) return;
    const nl = chunk.indexOf(LF);
    let when: string | null = null;
    if (!greeted) when = 'before the greeting';
    else if (replyDue) when = `after ${lastCommand || 'a command'}`;
    else if (nl >= 0 && nl < chunk.length - 1) {
      when = `after ${verb(chunk.subarray(0, nl))}`;
      chunk = chunk.subarray(nl + 1);
    }
    if (when) {
      socket.removeListener('data', onData);
      onViolation(conn.session, conn.remoteAddress, when, chunk.subarray(0, 100).toString('latin1'));
      conn.send(554, '5.5.0 Error: SMTP protocol synchronization');
      conn.close(); // also stops smtp-server's parser: this chunk is not executed
      return;
    }
    if (nl >= 0) {
      replyDue = true;
      lastCommand = verb(chunk.subarray(0, nl));
    }
  };
  // ahead of smtp-server's own listener (the pipe to its parser), so a reply sent
  // synchronously for this chunk does not count as having preceded it
  socket.prependListener('data', onData);
}

function verb(line: Buffer): string {
  return (/^[A-Za-z]{1,12}/.exec(line.toString('latin1'))?.[0] ?? '?').toUpperCase();
}
