/** Mail addresses, domains and client networks. */
import * as net from 'node:net';

export function splitAddress(address: string): { local: string; domain: string } {
  const at = address.lastIndexOf('@');
  if (at < 0) return { local: address, domain: '' };
  return { local: address.slice(0, at), domain: address.slice(at + 1).toLowerCase() };
}

export function domainOf(address: string): string {
  return splitAddress(address).domain;
}

/** A list of networks (`127.0.0.0/8`, `[::1]/128`, `10.1.2.3`) that answers "is this address inside?". */
export class NetworkList {
  private blocks = new net.BlockList();

  constructor(readonly entries: string[]) {
    for (const raw of entries) {
      const e = raw.replace(/^\[([^\]]+)\]/, '$1');
      const [addr, bits] = e.split('/');
      const type = net.isIPv6(addr) ? 'ipv6' : net.isIPv4(addr) ? 'ipv4' : null;
      if (!type) throw new Error(`"${raw}" is not a network address`);
      if (bits === undefined) this.blocks.addAddress(addr, type);
      else this.blocks.addSubnet(addr, parseInt(bits, 10), type);
    }
  }

  /** Answers for addresses asked about lately: smtpd asks for the same client at every RCPT and DATA, and BlockList.check builds a SocketAddress each time. */
  private readonly answers = new Map<string, boolean>();

  contains(address: string): boolean {
    const known = this.answers.get(address);
    if (known !== undefined) return known;
    const a = address.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
    const type = net.isIPv6(a) ? 'ipv6' : net.isIPv4(a) ? 'ipv4' : null;
    const inside = type ? this.blocks.check(a, type) : false;
    // bounded: the list is immutable, so an answer never goes stale, only the memory matters
    if (this.answers.size >= 4096) this.answers.clear();
    this.answers.set(address, inside);
    return inside;
  }
}
