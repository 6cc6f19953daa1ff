/**
 * What a whole-message check is (the observer contract): message-checks.ts
 * builds the list, message-auth.ts and spamd.ts implement it. Kept apart so
 * that the implementations do not import the module that imports them.
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
