/**
 * Browser test helpers: Debian's chromium driven by playwright-core. Nothing
 * here downloads a browser; CI installs chromium with apt-get (`.ci/run`).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type Browser,
  type BrowserContext,
  chromium,
  type Locator,
  type Page,
} from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/**
 * `false` (with the reason printed) when browser tests cannot run here. In CI a
 * missing chromium is a failure, not a skip: the suite must not pass silently.
 */
export function browserSkip(): string | false {
  if (existsSync(CHROMIUM)) return false;
  const why = `${CHROMIUM} is missing: apt-get install -y chromium`;
  if (process.env.CI) throw new Error(`browser tests need chromium in CI; ${why}`);
  process.stderr.write(`\n*** skipping browser tests: ${why} ***\n\n`);
  return why;
}

/** playwright's `launch` gives every browser a fresh temporary user-data dir of its own. */
export async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A page in its own context (own storage, as another person's browser), that
 * fails the test on any dialog or uncaught page error.
 */
export async function openPage(
  browser: Browser,
  url: string,
  viewport = DESKTOP,
): Promise<{ page: Page; context: BrowserContext; problems: string[] }> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const problems: string[] = [];
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.message()}`);
    void d.dismiss();
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  await page.goto(url);
  return { page, context, problems };
}

/**
 * `problems` without what Chromium logs while the server cannot be reached:
 * each refused reconnect attempt, and its fetch of the page's icon (again when
 * the address changes). How many there are depends on how long that lasted.
 */
export function unlessRefused(problems: string[]): string[] {
  return problems.filter(
    (p) =>
      !/WebSocket connection to .* net::ERR_CONNECTION_REFUSED/.test(p) &&
      p !== 'console error: Failed to load resource: net::ERR_CONNECTION_REFUSED',
  );
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

/**
 * Resolves once the image is decoded (so the page's CSP let it in), rejects
 * when it fails or is still loading after `ms`.
 */
export async function imageLoaded(img: Locator, ms = 5_000): Promise<void> {
  await img.evaluate(
    (el: any, limit: number) =>
      el.complete && el.naturalWidth > 0
        ? undefined
        : new Promise((resolve, reject) => {
            el.addEventListener('load', resolve);
            el.addEventListener('error', () => reject(new Error('the image did not load')));
            setTimeout(() => reject(new Error('the image is still loading')), limit);
          }),
    ms,
  );
}
