/**
 * showq: the queue listing for users who may not read the spool (mailq,
 * sendmail -bp as an ordinary user), on the world-connectable public/showq
 * socket. Runs as the queue owner, uses envelopes and recipient states only
 * (never the message), answers one {type:'list'} request per connection, and
 * changes nothing.
 */
import { runService, ServiceContext, RunningService, readQueue, serveRequests, ShowqRequest, ShowqReply, validate, showqRequest } from '@postern/common';

async function start(ctx: ServiceContext): Promise<RunningService> {
  const server = serveRequests<ShowqRequest, ShowqReply>({
    // anyone can connect: one who sends nothing is not kept
    timeoutMs: 30000,
    check: (raw) => validate(showqRequest, raw),
    log: ctx.log,
    logFields: { socket: `public/${ctx.name}` },
    answer: async () => ({ ok: true, entries: await readQueue(ctx.spool) }),
    failure: (error) => ({ ok: false, error }),
  });
  return {
    listen: (h) => server.listen(h),
    stop: () => server.stop(),
  };
}

runService('showq', start);
