// A FREE account's whole way in: sign up, upload, find, download, delete.

import { readFile } from 'node:fs/promises';
import { ELF, PASSWORD, expect, png, screenshots, test, uniqueEmail } from '../support/fixtures.mjs';

test('the page is served with its security headers, revalidates by ETag and shows API errors', async ({ page, request, expectedConsoleErrors }) => {
  const resp = await page.goto('/');
  const headers = resp.headers();
  const csp = headers['content-security-policy'];
  expect(csp).toContain("script-src 'self'");
  expect(csp).not.toContain('unsafe-inline');
  expect(csp).toContain("frame-ancestors 'none'");
  expect(headers['x-frame-options']).toBe('DENY');
  const again = await request.get('/', { headers: { 'If-None-Match': headers.etag } });
  expect(again.status()).toBe(304);

  // An API error shows its detail in an alert.
  expectedConsoleErrors.push(/status of 401/);
  await page.getByLabel('Email').fill(uniqueEmail('nobody'));
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('alert')).toContainText('wrong e-mail or password');
  await expect(page.getByRole('button', { name: 'Sign up' })).toBeVisible();
});

test('a FREE account signs up, uploads, finds, downloads and deletes files', async ({ page }, testInfo) => {
  await page.goto('/');
  await screenshots(page, testInfo, 'signed-out');
  const email = uniqueEmail('free');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign up' }).click();

  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
  await expect(page.getByRole('banner')).toContainText(email);
  await expect(page.getByRole('banner')).toContainText('FREE');
  const storage = page.getByRole('meter', { name: 'Storage', exact: true });
  await expect(storage).toHaveAttribute('aria-valuenow', '0');
  await expect(storage).toContainText('0 B of 1 GB used');
  for (const name of ['AI descriptions', 'Chat messages', 'Concurrent uploads']) {
    await expect(page.getByRole('meter', { name, exact: true })).toContainText(/0 of \d+/);
  }
  await expect(page.getByText('API keys come with STARTER and above')).toBeVisible();
  await expect(page.getByLabel('Key name')).toBeHidden();
  await expect(page.getByRole('button', { name: 'Create API key' })).toBeHidden();

  const photo = png(64, 48);
  const notes = Buffer.from('# Notes\n\nZürich, two items.\n');
  await page.getByLabel('Choose files').setInputFiles([
    { name: 'photo.png', mimeType: 'image/png', buffer: photo },
    { name: 'notes.md', mimeType: 'text/markdown', buffer: notes },
    { name: 'fake.png', mimeType: 'image/png', buffer: ELF },
  ]);
  for (const name of ['photo.png', 'notes.md']) {
    await expect(page.getByRole('progressbar', { name, exact: true })).toHaveAttribute('aria-valuenow', '100');
  }
  await expect(page.getByRole('progressbar')).toHaveCount(2);
  const refused = page.getByRole('alert').filter({ hasText: 'fake.png' });
  await expect(refused).toHaveCount(1);
  await expect(refused).toContainText('files of type application/x-executable are not accepted');

  // Listed, newest first, with category and size; the refused one is not.
  const photoRow = page.getByRole('row').filter({ hasText: 'photo.png' });
  await expect(photoRow).toContainText('image');
  await expect(photoRow).toContainText(`${(photo.length / 1024).toFixed(1)} KB`);
  await expect(page.getByRole('row').filter({ hasText: 'notes.md' })).toContainText('document');
  await expect(page.getByRole('button', { name: 'Download fake.png' })).toHaveCount(0);
  await expect(page.getByRole('button', { name: /^Describe / })).toHaveCount(2);
  await expect(photoRow.locator('img')).toHaveJSProperty('naturalWidth', 64);
  await expect(storage).toHaveAttribute('aria-valuenow', String(photo.length + notes.length));

  // Search by name, and the category filter.
  const downloads = page.getByRole('button', { name: /^Download / });
  await page.getByLabel('Search files').fill('PHOT');
  await expect(downloads).toHaveCount(1);
  await expect(page.getByRole('button', { name: 'Download photo.png' })).toBeVisible();
  await page.getByLabel('Search files').fill('');
  await expect(downloads).toHaveCount(2);
  await page.getByLabel('Category').selectOption('document');
  await expect(downloads).toHaveCount(1);
  await expect(page.getByRole('button', { name: 'Download notes.md' })).toBeVisible();
  await page.getByLabel('Category').selectOption('');
  await expect(downloads).toHaveCount(2);

  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download photo.png' }).click(),
  ]);
  expect(download.suggestedFilename()).toBe('photo.png');
  expect((await readFile(await download.path())).equals(photo)).toBe(true);

  await screenshots(page, testInfo, 'dashboard');

  // Delete asks first; cancelling keeps the file.
  await page.getByRole('button', { name: 'Delete notes.md' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('Delete notes.md?');
  await screenshots(page, testInfo, 'confirm-delete', { fullPage: false });
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('button', { name: 'Delete notes.md' })).toBeVisible();
  await page.getByRole('button', { name: 'Delete notes.md' }).click();
  await dialog.getByRole('button', { name: 'Delete', exact: true }).click();
  await expect(page.getByRole('button', { name: 'Delete notes.md' })).toHaveCount(0);
  await expect(storage).toHaveAttribute('aria-valuenow', String(photo.length));
  const usage = await (await page.request.get('/usage')).json();
  expect(usage.usage.storage_bytes.used).toBe(photo.length);

  // A reload keeps the session and its CSRF token: logging out still works.
  await page.reload();
  await expect(page.getByRole('banner')).toContainText(email);
  await expect(page.getByRole('button', { name: 'Download photo.png' })).toBeVisible();
  await page.getByRole('textbox', { name: 'Message' }).fill('a private draft');
  await page.getByLabel('Search files').fill('photo');
  await page.getByRole('button', { name: 'Log out' }).click();
  await expect(page.getByRole('button', { name: 'Log in' })).toBeVisible();
  expect((await page.request.get('/me')).status()).toBe(401);

  // The next person at this browser finds nothing typed by the last one.
  const next = uniqueEmail('next');
  await page.getByLabel('Email').fill(next);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign up' }).click();
  await expect(page.getByRole('banner')).toContainText(next);
  await expect(page.getByRole('textbox', { name: 'Message' })).toHaveValue('');
  await expect(page.getByLabel('Search files')).toHaveValue('');
});
