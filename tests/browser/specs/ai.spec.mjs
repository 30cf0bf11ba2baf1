// Describe and chat, against the stand-in AI provider that scripts/test.sh
// starts (tests/browser/support/ai-provider.mjs): the description shows on
// the file, chat answers with the ticked files as context, and the monthly
// meters count both.

import { createAccount, expect, logIn, png, screenshots, test } from '../support/fixtures.mjs';

const STANDIN = process.env.INTAKE_AI_STANDIN_URL;

async function providerRequests(request) {
  const resp = await request.get(`${STANDIN}/requests`);
  expect(resp.status()).toBe(200);
  return resp.json();
}

test('describe shows the description on the file, chat answers about the ticked files, and the meters count both', async ({ page, request }, testInfo) => {
  const account = await createAccount(request, 'free');
  await logIn(page, account.email);
  const ai = page.getByRole('meter', { name: 'AI descriptions', exact: true });
  const chat = page.getByRole('meter', { name: 'Chat messages', exact: true });
  await expect(ai).toContainText('0 of 15 used this month');
  await expect(chat).toContainText('0 of 10 used this month');

  // Unique names: the stand-in serves both servers and every test.
  const tag = Math.random().toString(36).slice(2, 8);
  const photo = `heron-${tag}.png`;
  const notes = `notes-${tag}.md`;
  const other = `other-${tag}.md`;
  await page.getByLabel('Choose files').setInputFiles([
    { name: photo, mimeType: 'image/png', buffer: png(96, 64, 3) },
    { name: notes, mimeType: 'text/markdown', buffer: Buffer.from(`# Birds ${tag}\n\nA heron by the lake.\n`) },
    { name: other, mimeType: 'text/markdown', buffer: Buffer.from('Not ticked, not sent.\n') },
  ]);
  for (const name of [photo, notes, other]) {
    await expect(page.getByRole('progressbar', { name, exact: true })).toHaveAttribute('aria-valuenow', '100');
  }

  // Describe: the provider got the image as a data URL, the row shows the
  // answer, and the meter counts it.
  const photoRow = page.getByRole('row').filter({ hasText: photo });
  await page.getByRole('button', { name: `Describe ${photo}` }).click();
  await expect(photoRow).toContainText(/A stand-in look at an image sent as image\/\w+\./);
  await expect(ai).toContainText('1 of 15 used this month');
  await expect(ai).toHaveAttribute('aria-valuenow', '1');
  const describeCall = (await providerRequests(request)).find((r) =>
    JSON.stringify(r.body.messages[1].content).includes('data:image/'),
  );
  expect(describeCall, 'the provider was sent an image').toBeTruthy();
  expect(describeCall.authorization).toBe('Bearer stand-in-key');
  expect(describeCall.body.model).toBe('stand-in-vision');

  // The description is stored: it survives a reload and search finds it.
  await page.reload();
  await expect(photoRow).toContainText(/A stand-in look at an image/);
  await page.getByLabel('Search files').fill('stand-in look');
  await expect(page.getByRole('button', { name: /^Download / })).toHaveCount(1);
  await expect(page.getByRole('button', { name: `Download ${photo}` })).toBeVisible();
  await page.getByLabel('Search files').fill('');
  await expect(page.getByRole('button', { name: /^Download / })).toHaveCount(3);

  // Chat with two of the three files ticked.
  await photoRow.getByLabel('Use in chat').check();
  await page.getByRole('row').filter({ hasText: notes }).getByLabel('Use in chat').check();
  const message = `Which birds are in my files? (${tag})`;
  await page.getByRole('textbox', { name: 'Message', exact: true }).fill(message);
  await page.getByRole('button', { name: 'Send' }).click();
  const reply = page.locator('#chat-log');
  await expect(reply).toContainText(`Stand-in reply to “${message}”: 2 files in context`);
  await expect(reply).toContainText('1 described');
  await expect(reply).toContainText(photo);
  await expect(reply).toContainText(notes);
  await expect(reply).not.toContainText(other);
  await expect(reply).toContainText('model stand-in-vision');
  await expect(chat).toContainText('1 of 10 used this month');
  await expect(page.getByRole('textbox', { name: 'Message', exact: true })).toHaveValue('');

  // What reached the model: the description of one, the text of the other.
  const chatCall = (await providerRequests(request)).find((r) => r.body.messages[1].content === message);
  expect(chatCall, 'the provider was sent the message').toBeTruthy();
  const context = chatCall.body.messages[0].content;
  expect(context).toContain(`"${photo}"`);
  expect(context).toMatch(/Description: A stand-in look at an image/);
  expect(context).toContain(`# Birds ${tag}`);
  expect(context).not.toContain(other);

  const usage = await (await page.request.get('/usage')).json();
  expect(usage.usage.ai_descriptions.used).toBe(1);
  expect(usage.usage.chat_messages.used).toBe(1);
  await screenshots(page, testInfo, 'describe-and-chat');
});
