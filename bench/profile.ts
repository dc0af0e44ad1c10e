/**
 * A CPU profile (`node --cpu-prof`) in a few lines: self time by function,
 * and by where the code lives (charla, Node's stream and net internals, GC).
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

function place(url: string): string {
  if (url === '') return 'V8 / native';
  if (url.includes('/src/')) return 'charla';
  if (url.includes('/bench/')) return 'bench preload';
  if (url.includes('node_modules')) return 'dependencies';
  if (/node:internal\/(streams|stream_base_commons|net)|node:net/.test(url))
    return 'node streams / net';
  if (url.startsWith('node:')) return 'node (other)';
  return 'other';
}

/** Markdown: the top functions by self time, and self time by place. */
export function summariseProfile(profile: CpuProfile, title: string, top = 20): string {
  const total = profile.nodes.reduce((n, x) => n + (x.hitCount ?? 0), 0) || 1;
  const byFn = new Map<string, number>();
  const byPlace = new Map<string, number>();
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^.*\/(src|bench|node_modules)\//, '$1/');
    const key = `${functionName || '(anonymous)'} ${file}${url ? `:${lineNumber + 1}` : ''}`;
    byFn.set(key, (byFn.get(key) ?? 0) + hits);
    const where = functionName.startsWith('(') ? functionName : place(url);
    byPlace.set(where, (byPlace.get(where) ?? 0) + hits);
  }
  const pct = (h: number) => `${((h / total) * 100).toFixed(1)}%`;
  const rows = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, h]) => `| ${k.replace(/\|/g, '\\|')} | ${pct(h)} |`);
  const seconds = (profile.endTime - profile.startTime) / 1e6;
  return [
    `### CPU profile: ${title}`,
    '',
    `${seconds.toFixed(1)} s profiled, ${total} samples.`,
    '',
    '| where | self time |',
    '| --- | --- |',
    ...rows(byPlace, 12),
    '',
    '| function | self time |',
    '| --- | --- |',
    ...rows(byFn, top),
    '',
  ].join('\n');
}
