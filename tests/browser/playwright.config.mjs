// The dashboard in headless Chromium (Debian's, never a downloaded one),
// once against intake on the local-folder backend and once on S3. The
// servers are started by scripts/test.sh, which passes their URLs.

import { defineConfig } from '@playwright/test';

const chromium = process.env.CHROMIUM || '/usr/bin/chromium';

export default defineConfig({
  testDir: './specs',
  outputDir: './artifacts/output',
  timeout: 180_000,
  expect: { timeout: 15_000 },
  fullyParallel: true,
  workers: Number(process.env.BROWSER_WORKERS || 2),
  reporter: [['list'], ['json', { outputFile: 'artifacts/results.json' }]],
  use: {
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: chromium,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
  projects: [
    { name: 'fs', use: { baseURL: process.env.INTAKE_FS_URL } },
    { name: 's3', use: { baseURL: process.env.INTAKE_S3_URL } },
  ],
});
