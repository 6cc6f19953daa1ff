/**
 * showq: the queue listing for users who may not read the spool (mailq,
 * sendmail -bp as an ordinary user), on the world-connectable public/showq
 * socket. Runs as the queue owner, uses envelopes and recipient states only
 * (never the message), answers one {type:'list'} request per connection, and
 * changes nothing.
 */
import * as net from 'node:net';
import { runService, ServiceContext, RunningService, FrameReader, FrameWriter, readQueue } from '@postern/common';

async function start(ctx: ServiceContext): Promise<RunningService> {
  const servers: net.Server[] = [];
  async function handle(conn: net.Socket): Promise<void> {
    const writer = new FrameWriter(conn);
    try {
      conn.setTimeout(30000, () => conn.destroy());
      const req = await new FrameReader(conn).json();
      if (req?.type !== 'list') throw new Error('expected {type:"list"}');
      await writer.json({ ok: true, entries: await readQueue(ctx.spool) });
    } catch (e) {
      await writer.json({ ok: false, error: (e as Error).message }).catch(() => undefined);
    } finally {
      conn.end();
    }
  }
  return {
    listen(h) {
      const s = net.createServer((c) => { c.on('error', () => undefined); void handle(c); });
      s.listen(h as any);
      servers.push(s);
    },
    async stop() { for (const s of servers) s.close(); },
  };
}

runService('showq', start);
