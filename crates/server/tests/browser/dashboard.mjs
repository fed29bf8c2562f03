// Opens the service's /dashboard in headless Chromium, enters a reporting key and a period, waits for the
// charts, and prints every bar it drew (chart, group, series, value) as one JSON line for the Rust test;
// saves a screenshot.
// Usage: node dashboard.mjs http://127.0.0.1:PORT KEY FROM TO SCREENSHOT.png   (CHROMIUM overrides /usr/bin/chromium)
import { chromium } from 'playwright-core';

const [base, key, from, to, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const result = { bars: [], labels: [], external: [], errors: [], state: null, status: null, stored: null };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) result.external.push(r.url()); });
  page.on('pageerror', (e) => result.errors.push(String(e)));
  await page.goto(`${base}/dashboard`, { waitUntil: 'networkidle' });
  await page.fill('#key', key);
  await page.fill('#from', from);
  await page.fill('#to', to);
  await page.click('#show');
  await page.waitForSelector('body[data-state]', { timeout: 20000 });
  result.state = await page.getAttribute('body', 'data-state');
  result.status = (await page.textContent('#status')).trim();
  result.bars = await page.$$eval('svg rect[data-chart]', (rects) => rects.map((r) => ({
    chart: r.dataset.chart, group: r.dataset.group, series: r.dataset.series, value: Number(r.dataset.value),
  })));
  // The value printed above each funnel bar, as the reader sees it.
  result.labels = await page.$$eval('#funnel-chart text[data-label]', (ts) => ts.map((t) => Number(t.textContent)));
  result.stored = await page.evaluate(() => sessionStorage.getItem('reportingKey') !== null);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  result.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
