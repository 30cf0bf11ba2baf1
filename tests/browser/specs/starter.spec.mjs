// A STARTER account's API keys: created and shown once, usable, revoked.

import { createAccount, expect, logIn, screenshots, test } from '../support/fixtures.mjs';

test('a STARTER account creates a key, uses it over plain HTTP and revokes it', async ({ page, request, context }, testInfo) => {
  const account = await createAccount(request, 'starter');
  await logIn(page, account.email);
  await expect(page.getByRole('banner')).toContainText('STARTER');
  await expect(page.getByText('API keys come with STARTER and above')).toBeHidden();

  await page.getByLabel('Key name').fill('deploy bot');
  await page.getByRole('button', { name: 'Create API key' }).click();
  const shown = page.getByLabel('New API key');
  await expect(shown).toHaveValue(/^ik_[A-Za-z0-9]{8}_\S+$/);
  const key = await shown.inputValue();
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  await page.getByRole('button', { name: 'Copy' }).click();
  await expect(page.getByText('Copied.')).toBeVisible();
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(key);
  await expect(page.getByRole('button', { name: 'Revoke deploy bot' })).toBeVisible();
  await expect(page.getByRole('row').filter({ hasText: 'deploy bot' })).toContainText('never');
  await screenshots(page, testInfo, 'api-keys');

  const me = await request.get('/me', { headers: { Authorization: `Bearer ${key}` } });
  expect(me.status()).toBe(200);
  expect((await me.json()).email).toBe(account.email);

  // Shown once: after a reload the key is listed but its secret is gone.
  await page.reload();
  await expect(page.getByRole('button', { name: 'Revoke deploy bot' })).toBeVisible();
  await expect(page.getByLabel('New API key')).toBeHidden();
  expect(await page.content()).not.toContain(key);

  await page.getByRole('button', { name: 'Revoke deploy bot' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke', exact: true }).click();
  await expect(page.getByRole('button', { name: 'Revoke deploy bot' })).toHaveCount(0);
  await expect(page.getByText('No API keys yet.')).toBeVisible();

  const after = await request.get('/me', { headers: { Authorization: `Bearer ${key}` } });
  expect(after.status()).toBe(401);

  // Files dropped on the drop zone upload like chosen ones.
  const dropped = await page.evaluateHandle(() => {
    const data = new DataTransfer();
    data.items.add(new File(['dropped on the zone\n'], 'dropped.txt', { type: 'text/plain' }));
    return data;
  });
  await page.getByRole('group', { name: 'Drop zone' }).dispatchEvent('drop', { dataTransfer: dropped });
  await expect(page.getByRole('progressbar', { name: 'dropped.txt' })).toHaveAttribute('aria-valuenow', '100');
  await expect(page.getByRole('button', { name: 'Download dropped.txt' })).toBeVisible();
});
