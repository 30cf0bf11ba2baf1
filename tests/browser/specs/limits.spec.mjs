// Uploads at the edges: a file above the streaming cap, and one past the
// storage quota.

import { open } from 'node:fs/promises';
import { createAccount, expect, logIn, patchAccount, pngOfSize, screenshots, test } from '../support/fixtures.mjs';

const MIB = 1024 * 1024;

// An MP4 of `size` bytes: its header, then zeros, written in chunks.
async function writeVideo(path, size) {
  const file = await open(path, 'w');
  const header = Buffer.from('00000018667479706d703432000000006d70343269736f6d0000000866726565', 'hex');
  await file.write(header);
  const chunk = Buffer.alloc(8 * MIB);
  let written = header.length;
  while (written < size) {
    const n = Math.min(chunk.length, size - written);
    await file.write(chunk, 0, n);
    written += n;
  }
  await file.close();
}

test('a 120 MiB file goes straight to storage with a progress bar that moves', async ({ page, request }, testInfo) => {
  const account = await createAccount(request, 'free');
  await logIn(page, account.email);
  const path = testInfo.outputPath('big.mp4');
  const size = 120 * MIB;
  await writeVideo(path, size);

  const puts = [];
  page.on('request', (req) => {
    if (req.method() === 'PUT') puts.push(req.url());
  });
  // Every value the bar takes, as the page sets it.
  await page.evaluate(() => {
    window.seenProgress = [];
    new MutationObserver((changes) => {
      for (const change of changes) {
        if (change.target.getAttribute('aria-label') === 'big.mp4') {
          window.seenProgress.push(Number(change.target.getAttribute('aria-valuenow')));
        }
      }
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['aria-valuenow'] });
  });
  await page.getByLabel('Choose files').setInputFiles(path);
  const bar = page.getByRole('progressbar', { name: 'big.mp4' });
  await expect(bar).toBeVisible();

  if (testInfo.project.name === 's3') {
    // Multipart: pausing stops the parts in flight, resuming sends the rest.
    await expect.poll(() => page.evaluate(() => Math.max(0, ...window.seenProgress))).toBeGreaterThan(5);
    await page.getByRole('button', { name: 'Pause big.mp4' }).click();
    await expect(page.getByRole('button', { name: 'Resume big.mp4' })).toBeVisible();
    await expect(page.getByRole('listitem').filter({ hasText: 'big.mp4' })).toContainText('Paused');
    await page.getByRole('button', { name: 'Resume big.mp4' }).click();
  }
  await expect(bar).toHaveAttribute('aria-valuenow', '100', { timeout: 150_000 });
  const seen = await page.evaluate(() => window.seenProgress);
  const between = new Set(seen.filter((v) => v > 0 && v < 100));
  expect(between.size, `progress values seen: ${seen.join(',')}`).toBeGreaterThan(1);

  await expect(page.getByRole('row').filter({ hasText: 'big.mp4' })).toContainText('video');
  await expect(page.getByRole('meter', { name: 'Storage', exact: true })).toHaveAttribute('aria-valuenow', String(size));
  if (testInfo.project.name === 's3') {
    // Parts in parallel, straight to the object store.
    expect(puts.filter((u) => u.includes('partNumber=')).length).toBeGreaterThanOrEqual(15);
  } else {
    expect(puts.filter((u) => u.includes('/upload/presigned/')).length).toBe(1);
  }
  await screenshots(page, testInfo, 'large-upload');
});

test('an upload past the storage quota shows storage_quota_exceeded and changes no usage', async ({ page, request }, testInfo) => {
  const account = await createAccount(request, 'free');
  await patchAccount(request, account.id, { custom_limits: { storage_bytes: MIB } });
  await logIn(page, account.email);
  const storage = page.getByRole('meter', { name: 'Storage', exact: true });
  await expect(storage).toContainText('0 B of 1 MB used');
  await expect(page.getByRole('table', { name: /Your limits/ })).toContainText('custom; FREE tier: 1 GB');

  const first = pngOfSize(900 * 1024);
  await page.getByLabel('Choose files').setInputFiles({ name: 'first.png', mimeType: 'image/png', buffer: first });
  await expect(page.getByRole('progressbar', { name: 'first.png' })).toHaveAttribute('aria-valuenow', '100');
  await expect(storage).toHaveAttribute('aria-valuenow', String(first.length));
  // Near the limit: the page says what a higher tier allows.
  await expect(page.getByText(/Storage is at 88% of your limit\. STARTER allows 25 GB/)).toBeVisible();

  await page.getByLabel('Choose files').setInputFiles({
    name: 'second.png',
    mimeType: 'image/png',
    buffer: pngOfSize(300 * 1024, 2),
  });
  const refused = page.getByRole('alert').filter({ hasText: 'second.png' });
  await expect(refused).toContainText(`the storage quota of ${MIB} bytes would be exceeded`);
  await screenshots(page, testInfo, 'quota');
  await expect(storage).toHaveAttribute('aria-valuenow', String(first.length));
  await expect(page.getByRole('button', { name: /^Download / })).toHaveCount(1);
  await expect
    .poll(async () => (await (await page.request.get('/usage')).json()).usage.storage_bytes)
    .toEqual({ used: first.length, reserved: 0 });
});
