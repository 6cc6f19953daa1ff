/**
 * One place that hooks each connection smtp-server accepts. smtp-server adds a new
 * connection to its `connections` set before it starts reading: hooking there costs
 * the same at 10 sessions as at 10,000 (finding the new one by walking the set cost a
 * walk of every open session per connect). limits.ts, pipelining.ts and
 * reply-batching.ts wrap the connection's `send` here, in the order they are installed.
 */
import { SMTPServer } from 'smtp-server';

/** Calls `hook` with every connection `server` accepts from now on, before it reads. */
export function onEachConnection(server: SMTPServer, hook: (conn: any) => void): void {
  const connections = (server as any).connections as Set<any>;
  const add = connections.add;
  connections.add = function (conn: any) {
    add.call(this, conn);
    hook(conn);
    return this;
  };
}
