/** Statistics, the printed table and the SVG charts of a bench run. */

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

export function latencyStats(samples: number[]) {
  const s = samples.slice().sort((a, b) => a - b);
  return {
    p50: percentile(s, 50),
    p99: percentile(s, 99),
    max: s.at(-1) ?? Number.NaN,
    n: s.length,
  };
}

export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return '—';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return n.toFixed(digits);
}

export function table(headers: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

export interface Series {
  name: string;
  color: string;
  points: Array<[number, number]>;
}

/**
 * A small line chart as SVG text: x linear from zero; y linear from zero, or
 * logarithmic by decades (`log`) when the series differ by orders of magnitude.
 */
export function lineChart(
  title: string,
  xLabel: string,
  yLabel: string,
  series: Series[],
  opts: { log?: boolean } = {},
): string {
  const W = 720;
  const H = 360;
  const m = { l: 70, r: 200, t: 40, b: 50 };
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  const xMax = Math.max(...xs, 1);
  const x = (v: number) => m.l + (v / xMax) * (W - m.l - m.r);
  const plotH = H - m.t - m.b;
  let y: (v: number) => number;
  let ticks: number[];
  if (opts.log) {
    const lo = Math.floor(Math.log10(Math.min(...ys.filter((v) => v > 0), 1)));
    const hi = Math.ceil(Math.log10(Math.max(...ys, 10)));
    y = (v: number) => H - m.b - ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * plotH;
    ticks = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
  } else {
    const yMax = niceCeil(Math.max(...ys, 1e-9));
    y = (v: number) => H - m.b - (v / yMax) * plotH;
    ticks = Array.from({ length: 6 }, (_, i) => (yMax * i) / 5);
  }
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<title>${esc(title)}</title>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="15" font-weight="600">${esc(title)}</text>`,
  ];
  for (const v of ticks) {
    out.push(
      `<line x1="${m.l}" x2="${W - m.r}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e7eb"/>`,
      `<text x="${m.l - 8}" y="${y(v) + 4}" text-anchor="end" fill="#4b5563">${fmt(v, v < 10 && v !== Math.round(v) ? 1 : 0)}</text>`,
    );
  }
  for (const v of [...new Set(xs)].sort((a, b) => a - b)) {
    out.push(
      `<text x="${x(v)}" y="${H - m.b + 18}" text-anchor="middle" fill="#4b5563">${fmt(v)}</text>`,
    );
  }
  out.push(
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text transform="translate(16 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1])).sort((a, b) => a[0] - b[0]);
    out.push(
      `<polyline fill="none" stroke="${s.color}" stroke-width="2.5" points="${pts.map((p) => `${x(p[0])},${y(p[1])}`).join(' ')}"/>`,
      ...pts.map((p) => `<circle cx="${x(p[0])}" cy="${y(p[1])}" r="3.5" fill="${s.color}"/>`),
      `<rect x="${W - m.r + 16}" y="${m.t + i * 22}" width="14" height="4" fill="${s.color}"/>`,
      `<text x="${W - m.r + 36}" y="${m.t + i * 22 + 6}">${esc(s.name)}</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n');
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= v) return k * p;
  return 10 * p;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
}
