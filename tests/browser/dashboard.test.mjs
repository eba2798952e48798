// The dashboard in a real browser (Debian's chromium through playwright-core): load it,
// filter tasks, open one and watch its progress move, cancel and retry from the page, pause
// a queue, and check that a payload containing <script> is shown as text. Screenshots go to
// $TASKQ_ARTIFACTS.
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const url = process.env.TASKQ_URL;
const art = process.env.TASKQ_ARTIFACTS;
const results = [];
async function step(name, fn) {
  try {
    await fn();
    results.push([name, true]);
    console.log('ok   ' + name);
  } catch (e) {
    results.push([name, false]);
    console.log('FAIL ' + name + ': ' + (e && e.stack || e));
  }
}

const userDataDir = mkdtempSync(join(tmpdir(), 'taskq-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox'],
  viewport: { width: 1280, height: 900 },
});
const page = context.pages()[0] || await context.newPage();
const dialogs = [];
page.on('dialog', d => { dialogs.push(d.message()); d.accept(); });
const errors = [];
page.on('pageerror', e => errors.push(String(e)));

await step('the overview loads with counts, chart and queue depth', async () => {
  await page.goto(url);
  await page.waitForSelector('#counts .card[data-status="succeeded"]');
  await page.waitForFunction(() => Number(document.querySelector('#counts .card[data-status="succeeded"] .n').textContent) >= 5);
  await page.waitForSelector('#chart');
  await page.waitForSelector('#queues tr[data-queue="mail"]');
  // The chart gets points once the history has an interval or two.
  await page.waitForSelector('#chart path.series-succeeded', { timeout: 15000 });
  await page.screenshot({ path: join(art, 'overview.png'), fullPage: true });
});

await step('the task list filters by status and by text', async () => {
  await page.click('#nav-tasks');
  await page.waitForSelector('#tasks tr[data-id]');
  await page.selectOption('#f-status', 'failed');
  await page.click('#f-apply');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#tasks tr[data-id]')];
    return rows.length === 1 && rows[0].textContent.includes('fail');
  });
  await page.selectOption('#f-status', '');
  await page.fill('#f-q', 'slow-import');
  await page.click('#f-apply');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#tasks tr[data-id]')];
    return rows.length === 1 && rows[0].textContent.includes('slow');
  });
  await page.screenshot({ path: join(art, 'tasks-filtered.png'), fullPage: true });
});

await step('a task opens and its progress updates live', async () => {
  await page.click('#tasks tr[data-id]');
  await page.waitForSelector('#progress');
  const read = () => page.$eval('#progress', e => { try { return JSON.parse(e.textContent).done || 0; } catch { return 0; } });
  await page.waitForFunction(() => { try { return JSON.parse(document.querySelector('#progress').textContent).done >= 1; } catch { return false; } }, null, { timeout: 15000 });
  const first = await read();
  await page.waitForFunction((f) => { try { return JSON.parse(document.querySelector('#progress').textContent).done > f; } catch { return false; } }, first, { timeout: 15000 });
  assert.ok((await read()) > first, 'progress moved without a reload');
  assert.equal(await page.textContent('[data-field="status"]'), 'running');
  await page.screenshot({ path: join(art, 'task-progress.png'), fullPage: true });
});

await step('cancel and retry from the page', async () => {
  await page.click('#cancel');
  await page.waitForFunction(() => document.querySelector('[data-field="status"]').textContent === 'cancelled', null, { timeout: 15000 });
  await page.waitForFunction(() => !document.querySelector('#retry').disabled);
  await page.click('#retry');
  await page.waitForFunction(() => ['pending', 'running'].includes(document.querySelector('[data-field="status"]').textContent), null, { timeout: 15000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#run-log td')].some(td => td.textContent.includes('retried by request')));
  await page.screenshot({ path: join(art, 'task-retried.png'), fullPage: true });
});

await step('a queue is paused and resumed from the page', async () => {
  await page.click('#nav-queues');
  const row = '#queues tr[data-queue="mail"]';
  await page.waitForSelector(row);
  await page.click(row + ' button.toggle');
  await page.waitForFunction((r) => document.querySelector(r + ' .queue-state').textContent === 'paused', row);
  const api = await page.evaluate(async () => (await (await fetch('/api/queues')).json()).queues.find(q => q.name === 'mail').paused);
  assert.equal(api, true);
  await page.screenshot({ path: join(art, 'queues-paused.png'), fullPage: true });
  await page.click(row + ' button.toggle');
  await page.waitForFunction((r) => document.querySelector(r + ' .queue-state').textContent === 'active', row);
});

await step('a payload containing <script> shows as text and does not run', async () => {
  await page.goto(url + '#/tasks?q=__pwned');
  await page.waitForSelector('#tasks tr[data-id]');
  await page.click('#tasks tr[data-id]');
  await page.waitForSelector('#payload');
  const text = await page.textContent('#payload');
  assert.ok(text.includes('<script>window.__pwned = 1</script><b>bold</b>'), text);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.$$eval('#payload script, #payload b', n => n.length), 0);
  await page.screenshot({ path: join(art, 'task-script-payload.png'), fullPage: true });
});

await step('schedules show next due and run now enqueues a run', async () => {
  await page.click('#nav-schedules');
  const row = '#schedules tr[data-name="nightly-report"]';
  await page.waitForSelector(row);
  await page.click(row + ' button.run-now');
  await page.waitForFunction((r) => document.querySelector(r).children[5].textContent === '1', row, { timeout: 15000 });
  await page.screenshot({ path: join(art, 'schedules.png'), fullPage: true });
});

await step('a page on another site cannot change anything', async () => {
  // http://localhost:PORT is another origin (and site) than http://127.0.0.1:PORT: the
  // browser marks its request cross-site, and the server refuses it.
  const other = await context.newPage();
  const port = new URL(url).port;
  await other.goto(`http://localhost:${port}/`);
  await other.evaluate(async (target) => {
    await fetch(target + 'api/queues/mail/pause', { method: 'POST', mode: 'no-cors' }).catch(() => {});
  }, url);
  await other.close();
  const paused = await page.evaluate(async () => (await (await fetch('/api/queues')).json()).queues.find(q => q.name === 'mail').paused);
  assert.equal(paused, false);
});

assert.deepEqual(errors, [], 'no script errors on the page');
await context.close();
const passed = results.filter(r => r[1]).length;
const failed = results.length - passed;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
