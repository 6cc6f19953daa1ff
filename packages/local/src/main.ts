/**
 * local: the mailbox writer (entry point). qmgr's delivery requests come on
 * private/local.qmgr with the message in the frames (qmgr-requests.ts); the
 * LMTP server on private/local stays for lmtp: transports that name it. Looks each
 * recipient up in the user table at RCPT, and after DATA answers once per
 * recipient, writing Maildir (default) or mbox with Return-Path: and
 * Delivered-To: added. Touches the mailbox tree and its own spool directory
 * local/ only: no queue, no network.
 *
 * recipients.ts: who a recipient is; delivery.ts: one recipient's delivery and
 * reply; maildir.ts, mbox.ts (+ mbox-lock.ts): the two mailbox formats;
 * message-copy.ts: the copy a message for several recipients is read from
 * (in the spool's local/, local's own directory).
 */
import * as path from 'node:path';
import { SMTPServer, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import {
  runService, ServiceContext, RunningService, MainConfig, userDbOf, installEnhancedCodeShim, LOCAL_QMGR,
} from '@postern/common';
import { deliverToRecipient } from './delivery.js';
import { COPY_DIRECTORY, MessageCopies, MessageCopy } from './message-copy.js';
import { findUser } from './recipients.js';
import { serveQmgrRequests } from './qmgr-requests.js';

installEnhancedCodeShim();

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  let users = userDbOf(ctx.config);
  const servers: SMTPServer[] = [];
  const copies = new MessageCopies(path.join(ctx.spool.root, COPY_DIRECTORY));
  try {
    const removed = copies.removeLeftovers();
    if (removed.length) log.info({ dir: copies.dir, removed }, 'removed message copies a stopped local left behind');
  } catch (e) {
    // only several-recipient messages need the directory: they get 451 4.3.0 until it is fixed
    log.error({ dir: copies.dir, err: (e as Error).message }, 'cannot clean the message copy directory');
  }

  /** One reply per recipient; a message for several recipients is read from one copy. */
  async function receive(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<(string | Error)[]> {
    const rcpts = session.envelope.rcptTo.map((r) => r.address);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    let open: () => NodeJS.ReadableStream;
    let copy: MessageCopy | null = null;
    if (rcpts.length === 1) {
      let used = false;
      open = () => { if (used) throw new Error('message stream already read'); used = true; return stream; };
    } else {
      try {
        copy = await copies.copy(stream);
      } catch (e) {
        log.warn({ dir: copies.dir, err: (e as Error).message }, 'cannot copy a message for several recipients');
        throw e;
      }
      open = copy.open;
    }
    try {
      const replies: (string | Error)[] = [];
      const lockTimeoutMs = ctx.config.seconds('mailbox_lock_timeout') * 1000;
      for (const rcpt of rcpts) {
        try {
          const done = await deliverToRecipient({ rcpt, entry: await findUser(users, rcpt), sender, open, lockTimeoutMs, log });
          log.info({ to: `<${rcpt}>`, ...done.fields }, done.what);
          replies.push(done.reply);
        } catch (e) {
          replies.push(e as Error);
        }
      }
      return replies;
    } finally {
      if (!stream.readableEnded) stream.resume();
      if (copy) await copy.remove();
    }
  }

  const makeServer = (config: MainConfig) => {
    const server = new SMTPServer({
      lmtp: true, name: config.get('myhostname'), logger: false, authOptional: true,
      disabledCommands: ['AUTH', 'STARTTLS'], disableReverseLookup: true, hideSTARTTLS: true,
      socketTimeout: config.seconds('delivery_timeout') * 1000,
      onRcptTo(address, _session, cb) {
        findUser(users, address.address).then(() => cb(), (e) => cb(e as Error));
      },
      onData(stream, session, cb) {
        receive(stream, session).then((replies) => cb(null, replies as any), (err) => cb(err));
      },
    });
    server.on('error', (err) => log.warn({ err: err.message }, 'LMTP connection error'));
    return server;
  };

  const qmgrServer = serveQmgrRequests({
    log, users: () => users, copies, relay: `local[private/${LOCAL_QMGR}]`,
    lockTimeoutMs: () => ctx.config.seconds('mailbox_lock_timeout') * 1000,
  });

  return {
    listen(h, info) {
      if (info?.clients === 'qmgr') { qmgrServer.listen(h); return; }
      const s = makeServer(ctx.config);
      s.listen(h as any);
      servers.push(s);
    },
    reload(config) {
      users = userDbOf(config);
    },
    stop() {
      return Promise.all([qmgrServer.stop(), ...servers.map((s) => new Promise<void>((r) => s.close(() => r())))]).then(() => undefined);
    },
  };
}

runService('local', start);
