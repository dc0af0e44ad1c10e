/** Entry point: read config, build the app, listen, stop gracefully on a signal. */
import { type App, createApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { DEV_STATE_FILE, devBanner, loadDevState, prepareDevMode, withDevState } from './dev.js';

/** protocol section 1: exit within 10 s of SIGTERM/SIGINT, whatever happens. */
const SHUTDOWN_DEADLINE_MS = 10_000;

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`charla: ${err.message}\n`);
    process.exit(1);
  }
  // Dev mode signs with the secret of its previous run, so printed tokens survive a restart.
  if (config.devMode) {
    try {
      config = withDevState(config, loadDevState(DEV_STATE_FILE));
    } catch (err) {
      process.stderr.write(`charla: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    }
  }
  const created = await createApp(config);
  // Signals are handled from here on, before listening: one that comes while
  // dev mode registers its demo stream and request (clients may already be
  // connected) stops charla as cleanly as one that comes later. Until the app
  // exists a signal still ends the process outright: nothing is accepted yet,
  // and a start-up stuck in synchronous work stays killable.
  let app: App | undefined;
  let signalled: NodeJS.Signals | undefined;
  const shutdown = (running: App, signal: NodeJS.Signals) => {
    running.log.info({ signal }, 'shutting down');
    running.close().then(
      () => {
        running.log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        running.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  const stop = (signal: NodeJS.Signals) => {
    if (signalled !== undefined) return;
    signalled = signal;
    setTimeout(() => {
      process.stderr.write('charla: shutdown took too long; exiting\n');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    if (app !== undefined) shutdown(app, signal);
  };
  // Kept for the whole shutdown: a second signal (Ctrl-C twice, a supervisor
  // repeating itself) must not end the process before what it holds is stored.
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  for (const warning of config.warnings) created.log.warn(warning);
  const url = await created.listen();
  app = created;
  if (signalled !== undefined) return shutdown(created, signalled);
  created.log.info(
    { url, store: config.databaseUrl.split(':')[0], devMode: config.devMode },
    'listening',
  );
  if (config.devMode) {
    let tokens: Awaited<ReturnType<typeof prepareDevMode>>;
    try {
      tokens = await prepareDevMode(created);
    } catch (err) {
      // The store closing under it: the shutdown under way says how it went.
      if (signalled !== undefined) return;
      throw err;
    }
    if (signalled === undefined) process.stdout.write(`${devBanner(url, config.apiKey, tokens)}\n`);
  } else if (config.apiKeyGenerated) {
    // On stdout for whoever started it, never in the JSON logs that get shipped elsewhere.
    process.stdout.write(
      `charla: API_KEY is not set; generated API key (changes at every start): ${config.apiKey}\n`,
    );
  }
}

main().catch((err: unknown) => {
  process.stderr.write(
    `charla: failed to start: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
