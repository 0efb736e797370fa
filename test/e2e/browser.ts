// Debian's headless Chromium driven by playwright-core, for the status page's tests. The flags keep
// it from reaching Google's hosts (background networking, component updates, sync, QUIC); each
// browser gets a fresh profile directory.
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

/** Skip reason for tests that need Debian's Chromium, or false when it is installed. */
export const needsChromium = existsSync(CHROMIUM) ? false : `Debian's Chromium is not installed at ${CHROMIUM} (apt-get install chromium)`;

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A headless Chromium with a fresh --user-data-dir (playwright passes it from userDataDir). */
export async function openChromium(): Promise<BrowserContext> {
  const profile = mkdtempSync(join(tmpdir(), 'vit-dist-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 1100 },
    timeout: 60_000,
  });
}

/** Opens the status page at `url` and logs in with `token` through its form. */
export async function logIn(context: BrowserContext, url: string, token: string): Promise<Page> {
  const page = await context.newPage();
  await page.goto(url);
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForURL(url), page.click('button[type=submit]')]);
  await page.waitForSelector('#charts .uplot');
  return page;
}

/** The x and y values a chart of the page draws. */
export function chartData(page: Page, id: string): Promise<(number | null)[][]> {
  return page.evaluate(
    (chart) => (window as unknown as { vitDistCharts: Record<string, { data: (number | null)[][] }> }).vitDistCharts[chart]!.data,
    id,
  );
}
