/**
 * Counters, gauges and histograms, and the Prometheus text format 0.0.4 they
 * are scraped in. Small on purpose (docs/decisions.md: no client library).
 */

export type Labels = Record<string, string>;

/** More label sets than this per metric fold into one `other` series: a bad feed cannot blow up memory. */
const MAX_SERIES = 200;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (!keys.length) return '';
  return `{${keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(',')}}`;
}

/** Integers as integers, the rest as Go's strconv would print them; infinities as +Inf/-Inf. */
export function formatValue(n: number): string {
  if (n === Infinity) return '+Inf';
  if (n === -Infinity) return '-Inf';
  if (Number.isNaN(n)) return 'NaN';
  return String(n);
}

abstract class Metric {
  constructor(readonly name: string, readonly help: string, readonly type: 'counter' | 'gauge' | 'histogram') {}
  abstract samples(): string[];
  render(): string {
    return [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`, ...this.samples()].join('\n') + '\n';
  }
}

class Series<T> {
  private readonly map = new Map<string, { labels: Labels; value: T }>();
  constructor(private readonly make: () => T) {}
  get(labels: Labels): T {
    let key = JSON.stringify(labels);
    let s = this.map.get(key);
    if (!s) {
      if (this.map.size >= MAX_SERIES) {
        const other = Object.fromEntries(Object.keys(labels).map((k) => [k, 'other']));
        key = JSON.stringify(other);
        s = this.map.get(key) ?? { labels: other, value: this.make() };
      } else s = { labels, value: this.make() };
      this.map.set(key, s);
    }
    return s.value;
  }
  entries(): { labels: Labels; value: T }[] { return [...this.map.values()]; }
}

export class Counter extends Metric {
  private readonly series = new Series(() => ({ n: 0 }));
  /** Label sets shown as 0 before their first event, so a rate() has a starting point. */
  constructor(name: string, help: string, initial: Labels[] = []) {
    super(name, help, 'counter');
    for (const l of initial) this.series.get(l);
  }
  inc(labels: Labels = {}, by = 1): void { this.series.get(labels).n += by; }
  value(labels: Labels = {}): number { return this.series.get(labels).n; }
  total(): number { return this.series.entries().reduce((a, s) => a + s.value.n, 0); }
  samples(): string[] {
    const e = this.series.entries();
    if (!e.length) return [`${this.name} 0`];
    return e.map((s) => `${this.name}${formatLabels(s.labels)} ${formatValue(s.value.n)}`);
  }
}

export class Gauge extends Metric {
  private values: { labels: Labels; value: number }[] = [];
  constructor(name: string, help: string) { super(name, help, 'gauge'); }
  set(values: { labels: Labels; value: number }[]): void { this.values = values; }
  samples(): string[] { return this.values.map((s) => `${this.name}${formatLabels(s.labels)} ${formatValue(s.value)}`); }
}

export class Histogram extends Metric {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;
  constructor(name: string, help: string, readonly buckets: number[]) {
    super(name, help, 'histogram');
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]) this.counts[i]++;
    this.sum += v;
    this.count++;
  }
  samples(): string[] {
    const out = this.buckets.map((b, i) => `${this.name}_bucket{le="${formatValue(b)}"} ${this.counts[i]}`);
    out.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${formatValue(Math.round(this.sum * 1000) / 1000)}`, `${this.name}_count ${this.count}`);
    return out;
  }
  snapshot(): { count: number; sum: number } { return { count: this.count, sum: this.sum }; }
}

export class Registry {
  private readonly metrics: Metric[] = [];
  add<M extends Metric>(m: M): M { this.metrics.push(m); return m; }
  render(): string { return this.metrics.map((m) => m.render()).join(''); }
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
