/** Entry point: read config, build the app, listen, stop gracefully on a signal. */
import { createApp } from './app.js';
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
  const app = await createApp(config);
  for (const warning of config.warnings) app.log.warn(warning);
  const url = await app.listen();
  app.log.info(
    { url, store: config.databaseUrl.split(':')[0], devMode: config.devMode },
    'listening',
  );
  if (config.devMode) {
    process.stdout.write(`${devBanner(url, config.apiKey, await prepareDevMode(app))}\n`);
  } else if (config.apiKeyGenerated) {
    // On stdout for whoever started it, never in the JSON logs that get shipped elsewhere.
    process.stdout.write(
      `charla: API_KEY is not set; generated API key (changes at every start): ${config.apiKey}\n`,
    );
  }

  const stop = (signal: NodeJS.Signals) => {
    app.log.info({ signal }, 'shutting down');
    setTimeout(() => {
      app.log.error('shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    app.close().then(
      () => {
        app.log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        app.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `charla: failed to start: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
