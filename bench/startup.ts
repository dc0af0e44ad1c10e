/**
 * Start-up: from spawning `node dist/src/main.js` on a fresh SQLite database
 * to its "listening" log line, in wall time and in the process's own CPU time
 * (which a busy machine inflates far less). The baseline, measured in the
 * same run, is `node` itself starting and exiting.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));

/** CPU milliseconds (user + system) the process has used so far, from /proc. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * 10; // USER_HZ is 100 on Linux
}

async function once(args: string[], env: NodeJS.ProcessEnv, until: string | null, cwd?: string) {
  const started = performance.now();
  const child = spawn(process.execPath, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  let cpu = 0;
  if (until === null) {
    await exited;
  } else {
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      const onData = (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes(until)) resolve();
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (code) => reject(new Error(`exited with ${code} before "${until}"`)));
    });
    cpu = cpuMs(child.pid as number);
  }
  const wallMs = performance.now() - started;
  child.kill('SIGTERM');
  await exited;
  return { wallMs, cpuMs: cpu };
}

export async function startupScenario(runs: number) {
  const dir = mkdtempSync(join(tmpdir(), 'charla-startup-'));
  const charla: Array<{ wallMs: number; cpuMs: number }> = [];
  const node: Array<{ wallMs: number; cpuMs: number }> = [];
  try {
    for (let r = 0; r < runs; r++) {
      node.push(await once(['-e', ''], process.env, null));
      charla.push(
        await once(
          [MAIN],
          {
            ...process.env,
            PORT: '0',
            NODE_ENV: 'development',
            DATABASE_URL: `sqlite:${join(dir, `run-${r}.db`)}`,
            LOG_LEVEL: 'info',
          },
          'listening',
          dir, // dev mode keeps its secret in ./data/dev.json: here, not in the checkout
        ),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { charla, node };
}
