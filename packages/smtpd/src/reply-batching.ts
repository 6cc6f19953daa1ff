/**
 * Replies made in one turn of the event loop leave in one write, as Postfix's smtpd
 * flushes its reply buffer only when no more input is waiting: a pipelined
 * MAIL/RCPT/DATA gets its three replies in one system call (and over TLS in one
 * record) instead of three. The socket is corked at the first reply of a turn and
 * uncorked on the next tick; nothing waits longer than the current turn.
 *
 * 220 (the greeting, and STARTTLS's go-ahead, after which the socket is handed to
 * TLS), 221 and 421 (after which the connection closes) flush what is held first and
 * are written at once.
 */
import { SMTPServer } from 'smtp-server';
import { onEachConnection } from './connections.js';

const WRITE_AT_ONCE = new Set([220, 221, 421]);

/** Installs the batching on every connection `server` accepts from now on. */
export function batchReplies(server: SMTPServer): void {
  onEachConnection(server, batch);
}

function batch(conn: any): void {
  const send = conn.send;
  /** The socket corked in this turn (STARTTLS replaces conn._socket). */
  let corked: any = null;
  const flush = () => {
    const socket = corked;
    corked = null;
    if (socket) socket.uncork();
  };
  conn.send = function (code: number, data: unknown, context?: unknown) {
    if (WRITE_AT_ONCE.has(code)) {
      flush();
      return send.call(this, code, data, context);
    }
    const socket = conn._socket;
    if (!corked && socket && !socket.destroyed) {
      socket.cork();
      corked = socket;
      process.nextTick(flush);
    }
    return send.call(this, code, data, context);
  };
}
