// Creates a bucket on the S3 test server when it is missing, as the Rust
// suite's helpers do: HEAD, then PUT, signed with SigV4.
//
//   node create-bucket.mjs <endpoint> <bucket>   (keys from TEST_S3_*)

import { createHash, createHmac } from 'node:crypto';

const [endpoint, bucket] = process.argv.slice(2);
const access = process.env.TEST_S3_ACCESS_KEY_ID;
const secret = process.env.TEST_S3_SECRET_ACCESS_KEY;
const region = 'us-east-1';

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const hmac = (key, data) => createHmac('sha256', key).update(data).digest();

async function signed(method) {
  const url = new URL(`/${bucket}`, endpoint);
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const day = amzDate.slice(0, 8);
  const payload = sha256('');
  const canonical = [
    method,
    url.pathname,
    '',
    `host:${url.host}`,
    `x-amz-content-sha256:${payload}`,
    `x-amz-date:${amzDate}`,
    '',
    'host;x-amz-content-sha256;x-amz-date',
    payload,
  ].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n');
  let key = hmac(`AWS4${secret}`, day);
  for (const part of [region, 's3', 'aws4_request']) key = hmac(key, part);
  const signature = createHmac('sha256', key).update(toSign).digest('hex');
  return fetch(url, {
    method,
    headers: {
      'x-amz-content-sha256': payload,
      'x-amz-date': amzDate,
      authorization: `AWS4-HMAC-SHA256 Credential=${access}/${scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${signature}`,
    },
  });
}

const head = await signed('HEAD');
if (head.status !== 200) {
  const put = await signed('PUT');
  // Another run may have created it meanwhile; either way it exists after.
  if (put.status !== 200 && put.status !== 409) {
    console.error(`creating bucket ${bucket}: HTTP ${put.status} ${await put.text()}`);
    process.exit(1);
  }
}
