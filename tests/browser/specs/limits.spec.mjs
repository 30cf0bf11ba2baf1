// Uploads at the edges: a file above the streaming cap through the
// resumable (tus) path, paused and resumed, and uploads past the storage
// quota on both paths.

import { createHash, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { createAccount, expect, logIn, patchAccount, pngOfSize, screenshots, test } from '../support/fixtures.mjs';

const MIB = 1024 * 1024;
const MP4_HEADER = Buffer.from('00000018667479706d703432000000006d70343269736f6d0000000866726565', 'hex');

// An MP4 of `size` bytes: its header, then random bytes (so a misplaced or
// repeated chunk changes the hash), written in chunks; returns its SHA-256.
async function writeVideo(path, size) {
  const file = await open(path, 'w');
  const hash = createHash('sha256');
  const write = async (chunk) => {
    hash.update(chunk);
    await file.write(chunk);
  };
  await write(MP4_HEADER);
  let written = MP4_HEADER.length;
  while (written < size) {
    const chunk = randomBytes(Math.min(8 * MIB, size - written));
    await write(chunk);
    written += chunk.length;
  }
  await file.close();
  return hash.digest('hex');
}

// An MP4 header and `size` bytes in all, as a sparse file: for uploads that
// are refused before their bytes are read.
async function sparseVideo(path, size) {
  const file = await open(path, 'w');
  await file.write(MP4_HEADER);
  await file.truncate(size);
  await file.close();
}

// The upload's offset as intake has recorded it (tus HEAD; the session
// cookie is enough for a request that changes nothing).
async function offsetOf(page, uploadPath) {
  const resp = await page.request.head(uploadPath, { headers: { 'Tus-Resumable': '1.0.0' } });
  expect(resp.status()).toBe(200);
  return Number(resp.headers()['upload-offset']);
}

// Whether a request is still writing the upload: a PATCH at an offset that
// cannot be right answers 423 while one holds the upload, and 409 once none
// does, changing nothing either way. intake records the bytes of a broken
// request before it lets go of the upload.
async function stillWriting(page, uploadPath, wrongOffset) {
  const session = await (await page.request.get('/auth/session')).json();
  const resp = await page.request.patch(uploadPath, {
    headers: {
      'Tus-Resumable': '1.0.0',
      'Upload-Offset': String(wrongOffset),
      'Content-Type': 'application/offset+octet-stream',
      'X-CSRF-Token': session.csrf_token,
    },
    data: Buffer.alloc(0),
  });
  expect([409, 423]).toContain(resp.status());
  return resp.status() === 423;
}

test('a 120 MiB file goes through the resumable path, pauses, resumes and arrives whole', async ({ page, request }, testInfo) => {
  const account = await createAccount(request, 'free');
  await logIn(page, account.email);
  const path = testInfo.outputPath('big.mp4');
  const size = 120 * MIB;
  const sha256 = await writeVideo(path, size);

  // Every tus request the page makes, and where intake put the upload.
  const tusRequests = [];
  let uploadPath = null;
  page.on('request', (req) => {
    if (new URL(req.url()).pathname.startsWith('/upload/')) {
      tusRequests.push({ method: req.method(), path: new URL(req.url()).pathname, offset: req.headers()['upload-offset'] });
    }
  });
  page.on('response', (resp) => {
    if (resp.request().method() === 'POST' && new URL(resp.url()).pathname === '/upload/tus' && resp.status() === 201) {
      uploadPath = new URL(resp.headers().location).pathname;
    }
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
  // Until the pause, the browser sends at most 8 MiB/s (Chromium's own
  // throttling), so the pause lands part-way whatever the machine's speed.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const throttle = (uploadThroughput) =>
    cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput });
  await throttle(8 * MIB);
  await page.getByLabel('Choose files').setInputFiles(path);
  const bar = page.getByRole('progressbar', { name: 'big.mp4' });
  await expect(bar).toBeVisible();
  const item = page.getByRole('listitem').filter({ hasText: 'big.mp4' });

  // Pause part-way: the bytes stop, and intake's offset with them.
  await expect.poll(() => page.evaluate(() => Math.max(0, ...window.seenProgress)), { timeout: 60_000 }).toBeGreaterThanOrEqual(5);
  await page.getByRole('button', { name: 'Pause big.mp4' }).click();
  await expect(page.getByRole('button', { name: 'Resume big.mp4' })).toBeVisible();
  await expect(item).toContainText('Paused');
  expect(uploadPath, 'the creation answered with a Location').toMatch(/^\/upload\/tus\/[0-9a-f-]{36}$/);
  const patchesBefore = tusRequests.filter((r) => r.method === 'PATCH').length;
  // The request the pause broke off ends, its bytes recorded.
  await expect.poll(() => stillWriting(page, uploadPath, size), { timeout: 30_000 }).toBe(false);
  const pausedAt = await offsetOf(page, uploadPath);
  expect(pausedAt).toBeGreaterThan(0);
  expect(pausedAt).toBeLessThan(size);
  const barWhilePaused = await bar.getAttribute('aria-valuenow');
  await screenshots(page, testInfo, 'large-upload-paused');
  // Still there after the screenshots, with no request sent meanwhile.
  expect(await offsetOf(page, uploadPath)).toBe(pausedAt);
  expect(tusRequests.filter((r) => r.method === 'PATCH').length).toBe(patchesBefore);
  await expect(bar).toHaveAttribute('aria-valuenow', barWhilePaused);

  // Resuming sends the rest, at full speed, from where intake stopped.
  await throttle(-1);
  await page.getByRole('button', { name: 'Resume big.mp4' }).click();
  await expect(bar).toHaveAttribute('aria-valuenow', '100', { timeout: 150_000 });
  const resumed = tusRequests.filter((r) => r.method === 'PATCH').slice(patchesBefore);
  expect(resumed.length).toBeGreaterThanOrEqual(1);
  expect(resumed.every((r) => r.path === uploadPath)).toBe(true);
  expect(resumed[0].offset).toBe(String(pausedAt));
  // Nothing went through the presigned path.
  expect(tusRequests.filter((r) => r.path.startsWith('/upload/presigned'))).toEqual([]);

  const seen = await page.evaluate(() => window.seenProgress);
  const between = new Set(seen.filter((v) => v > 0 && v < 100));
  expect(between.size, `progress values seen: ${seen.join(',')}`).toBeGreaterThanOrEqual(2);

  await expect(page.getByRole('row').filter({ hasText: 'big.mp4' })).toContainText('video');
  await expect(page.getByRole('meter', { name: 'Storage', exact: true })).toHaveAttribute('aria-valuenow', String(size));
  // The stored bytes are the file's: intake hashes what it stored.
  const listed = await (await page.request.get('/files?q=big.mp4')).json();
  expect(listed.files.map((f) => [f.filename, f.size, f.sha256])).toEqual([['big.mp4', size, sha256]]);
  await expect
    .poll(async () => (await (await page.request.get('/usage')).json()).usage)
    .toMatchObject({ storage_bytes: { used: size, reserved: 0 }, concurrent_uploads: { active: 0 } });
  await screenshots(page, testInfo, 'large-upload');
});

test('uploads past the storage quota show storage_quota_exceeded and change no usage', async ({ page, request, expectedConsoleErrors }, testInfo) => {
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

  // Streaming: the batch answers, the file's own result is the refusal.
  await page.getByLabel('Choose files').setInputFiles({
    name: 'second.png',
    mimeType: 'image/png',
    buffer: pngOfSize(300 * 1024, 2),
  });
  const refused = page.getByRole('alert').filter({ hasText: 'second.png' });
  await expect(refused).toContainText(`the storage quota of ${MIB} bytes would be exceeded`);
  await expect(refused).toHaveAttribute('data-code', 'storage_quota_exceeded');

  // Resumable: refused at creation, before a byte is sent.
  expectedConsoleErrors.push(/status of 507/);
  const big = testInfo.outputPath('over.mp4');
  await sparseVideo(big, 101 * MIB);
  await page.getByLabel('Choose files').setInputFiles(big);
  const refusedBig = page.getByRole('alert').filter({ hasText: 'over.mp4' });
  await expect(refusedBig).toContainText(`the storage quota of ${MIB} bytes would be exceeded`);
  await expect(refusedBig).toHaveAttribute('data-code', 'storage_quota_exceeded');
  await expect(page.getByRole('progressbar', { name: 'over.mp4' })).toHaveCount(0);
  await screenshots(page, testInfo, 'quota');

  await expect(storage).toHaveAttribute('aria-valuenow', String(first.length));
  await expect(page.getByRole('button', { name: /^Download / })).toHaveCount(1);
  await expect
    .poll(async () => (await (await page.request.get('/usage')).json()).usage)
    .toMatchObject({ storage_bytes: { used: first.length, reserved: 0 }, concurrent_uploads: { active: 0 } });
});
