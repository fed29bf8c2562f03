// Loads the service's /docs page in headless Chromium, lists the operations in the order shown, tries the
// create operation with its example body, and prints what it saw as one JSON line for the Rust test.
// Usage: node docs.mjs http://127.0.0.1:PORT   (CHROMIUM overrides /usr/bin/chromium)
import { chromium } from 'playwright-core';

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const result = { operations: [], external: [], status: null, body: null, errors: [] };
try {
  const page = await browser.newPage();
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) result.external.push(r.url()); });
  page.on('pageerror', (e) => result.errors.push(String(e)));
  await page.goto(`${base}/docs/`, { waitUntil: 'networkidle' });
  await page.waitForSelector('.opblock', { timeout: 20000 });
  result.operations = await page.$$eval('.opblock-summary-path', (els) =>
    els.map((e) => e.getAttribute('data-path') || e.textContent.trim()));
  const op = page.locator('.opblock').filter({ hasText: 'combo-create-lead-opportunity' }).first();
  await op.locator('.opblock-summary').first().click();
  await op.locator('button.try-out__btn').click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: 20000 });
  result.status = (await status.innerText()).trim();
  result.body = (await op.locator('.live-responses-table .response-col_description pre').first().innerText()).trim();
} catch (e) {
  result.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
