// What every browser test shares: a page whose console errors fail the
// test, accounts made through the admin API, file fixtures, screenshots.

import { mkdir } from 'node:fs/promises';
import { deflateSync } from 'node:zlib';
import { test as base, expect } from '@playwright/test';

export { expect };

export const PASSWORD = 'correct horse battery';
const ADMIN_TOKEN = process.env.INTAKE_ADMIN_TOKEN;

export const test = base.extend({
  // Console errors a test provokes on purpose: Chromium logs every refused
  // request ("Failed to load resource: … 401"), which the page cannot stop.
  expectedConsoleErrors: async ({}, use) => {
    await use([]);
  },
  // Any other console error or uncaught exception (a CSP violation among
  // them) fails the test that caused it.
  page: async ({ page, expectedConsoleErrors }, use) => {
    const problems = [];
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const expected = expectedConsoleErrors.findIndex((pattern) => pattern.test(msg.text()));
      if (expected >= 0) expectedConsoleErrors.splice(expected, 1);
      else problems.push(`console error: ${msg.text()} (${msg.location().url})`);
    });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    await use(page);
    expect(problems, 'the console stays free of errors').toEqual([]);
  },
});

export function uniqueEmail(tag) {
  return `${tag}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}@example.com`;
}

// An account of the tier through POST /admin/accounts, with a password.
export async function createAccount(request, tier) {
  const email = uniqueEmail(tier);
  const resp = await request.post('/admin/accounts', {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
    data: { email, password: PASSWORD, tier },
  });
  expect(resp.status(), await resp.text()).toBe(201);
  return { ...(await resp.json()), email };
}

export async function patchAccount(request, id, body) {
  const resp = await request.patch(`/admin/accounts/${id}`, {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
    data: body,
  });
  expect(resp.status(), await resp.text()).toBe(200);
}

export async function logIn(page, email) {
  await page.goto('/');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
}

// Screenshots at a phone's width and a desktop's: the full page, or what
// the viewport shows (for a modal dialog, whose backdrop covers only that).
// At either width nothing may stick out sideways.
export async function screenshots(page, testInfo, view, { fullPage = true } = {}) {
  const dir = new URL('../artifacts/screenshots/', import.meta.url).pathname;
  await mkdir(dir, { recursive: true });
  for (const width of [375, 1280]) {
    await page.setViewportSize({ width, height: 900 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    expect(overflow, `the ${view} view fits ${width} px without sideways scrolling`).toBe(0);
    await page.screenshot({ path: `${dir}${testInfo.project.name}-${view}-${width}.png`, fullPage });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

// A real PNG (a colour gradient), so thumbnails have something to show.
export function png(width, height, seed = 0) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // truecolour
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      raw[row + 1 + x * 3] = (x * 255) / width;
      raw[row + 2 + x * 3] = (y * 255) / height;
      raw[row + 3 + x * 3] = (seed * 37) & 0xff;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// A PNG of at least `size` bytes: a valid image followed by filler, which
// image decoders ignore after IEND.
export function pngOfSize(size, seed = 1) {
  const image = png(32, 32, seed);
  return Buffer.concat([image, Buffer.alloc(Math.max(0, size - image.length), 7)]);
}

// An executable: bytes intake accepts under no name.
export const ELF = Buffer.concat([
  Buffer.from('7f454c4602010100000000000000000002003e0001000000', 'hex'),
  Buffer.alloc(256, 1),
]);
