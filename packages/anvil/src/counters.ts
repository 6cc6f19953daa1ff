/**
 * The client counters, as Postfix's anvil keeps them: per service and client
 * address, the connections open now and, per time unit, the connections
 * opened, messages (MAIL FROM), recipients (RCPT TO) and failed AUTH attempts.
 * A rate is counted in a fixed window that starts with the client's first
 * event and restarts once a time unit has passed, as in Postfix.
 */

export type RateEvent = 'connect' | 'message' | 'recipient' | 'auth';

interface ClientState {
  /** Connections open now. */
  count: number;
  /** Start of the current rate window, ms. */
  windowStart: number;
  rates: Record<RateEvent, number>;
}

const zeroRates = (): Record<RateEvent, number> => ({ connect: 0, message: 0, recipient: 0, auth: 0 });

export class ClientCounters {
  private readonly clients = new Map<string, ClientState>();

  /** `unitMs` is read at each event, so a reload's new anvil_rate_time_unit applies at once. */
  constructor(private readonly unitMs: () => number, private readonly now: () => number = Date.now) {}

  private state(key: string): ClientState {
    const now = this.now();
    let s = this.clients.get(key);
    if (!s) this.clients.set(key, s = { count: 0, windowStart: now, rates: zeroRates() });
    else if (now - s.windowStart >= this.unitMs()) { s.windowStart = now; s.rates = zeroRates(); }
    return s;
  }

  /** A new connection: the connections open now (this one included) and opened in this time unit. */
  connect(key: string): { count: number; rate: number } {
    const s = this.state(key);
    s.count++;
    s.rates.connect++;
    return { count: s.count, rate: s.rates.connect };
  }

  disconnect(key: string): void {
    const s = this.clients.get(key);
    if (s && s.count > 0) s.count--;
  }

  /** Counts one event (unless `peek`) and returns how many there were in this time unit. */
  event(key: string, kind: Exclude<RateEvent, 'connect'>, peek = false): number {
    const s = this.state(key);
    if (!peek) s.rates[kind]++;
    return s.rates[kind];
  }

  lookup(key: string): { count: number; rates: Record<RateEvent, number> } {
    const s = this.state(key);
    return { count: s.count, rates: { ...s.rates } };
  }

  /** Forgets clients with no open connection whose time unit is over; returns how many are left. */
  sweep(): number {
    const now = this.now();
    const unit = this.unitMs();
    for (const [key, s] of this.clients) {
      if (s.count === 0 && now - s.windowStart >= unit) this.clients.delete(key);
    }
    return this.clients.size;
  }

  get size(): number { return this.clients.size; }
}
