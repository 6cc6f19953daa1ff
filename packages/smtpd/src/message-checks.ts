/**
 * Checks that need the whole message (message authentication, spam
 * filtering). Each observer sees the message bytes as smtpd streams them to
 * cleanup, and at the end gives a verdict: reject, or headers to add and
 * envelope notes to record. An observer must never hold up or lose a message
 * because something it depends on is down: it then passes, and logs.
 */
import { SMTPServerSession } from 'smtp-server';
import { MainConfig, Logger, SmtpError } from '@postern/common';

export interface ObserverVerdict {
  reject?: SmtpError;
  /** Header lines (CRLF-terminated) to deliver in front of the message. */
  headers?: string;
  /** Facts for the queue file's envelope (e.g. { auth: {...} }). */
  notes?: Record<string, unknown>;
}

export interface MessageObserver {
  /** Called with each chunk as stored; must not throw. */
  write(chunk: Buffer): void;
  finish(): Promise<ObserverVerdict>;
  /** The message was rejected or the client went away. */
  abort(): void;
}

export interface CheckContext {
  session: SMTPServerSession;
  config: MainConfig;
  log: Logger;
  /** True for clients in mynetworks or authenticated: the checks for mail from outside are skipped. */
  trusted: boolean;
}

/** The observers for one message; empty for trusted clients. */
export function createMessageObservers(_c: CheckContext): MessageObserver[] {
  return [];
}
