// Minimal tus 1.0.0 client for the upload benchmark, on plain node:http.
// For each upload: POST (creation, Upload-Length), then PATCH requests of
// CHUNK_BYTES each, in order, bodies streamed from the source file; this is
// what tus-js-client does when chunkSize is set. All uploads run concurrently.
// The same client drives the tus reference server and intake's /upload/tus.
//
//   node client.mjs CREATE_URL FILE UPLOAD_BYTES COUNT CHUNK_BYTES
//
// CREATE_URL is where uploads are created (e.g. http://127.0.0.1:1080/files).
// TUS_AUTHORIZATION, when set, is sent as the Authorization header.
//
// Prints one JSON line: {"seconds": wall time from the first request to the
// last upload finished, "ids": upload ids (= object keys in the bucket)}.
import http from 'node:http';
import fs from 'node:fs';

const [createUrl, file, uploadBytesArg, countArg, chunkBytesArg] = process.argv.slice(2);
const auth = process.env.TUS_AUTHORIZATION ? { Authorization: process.env.TUS_AUTHORIZATION } : {};
const uploadBytes = Number(uploadBytesArg);
const count = Number(countArg);
const chunkBytes = Number(chunkBytesArg);
const agent = new http.Agent({ keepAlive: true, maxSockets: count });

// Send one request; resolve with the response once its body is drained.
function request(method, url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body) body.on('error', reject).pipe(req);
    else req.end();
  });
}

async function upload(n) {
  const created = await request('POST', createUrl, {
    ...auth,
    'Tus-Resumable': '1.0.0',
    'Upload-Length': String(uploadBytes),
    'Upload-Metadata': `filename ${Buffer.from(`bench-${n}.bin`).toString('base64')}`,
    'Content-Length': '0',
  });
  if (created.status !== 201) throw new Error(`POST: ${created.status} ${created.body}`);
  const url = new URL(created.headers.location, createUrl).href;
  let offset = 0;
  while (offset < uploadBytes) {
    const len = Math.min(chunkBytes, uploadBytes - offset);
    const res = await request('PATCH', url, {
      ...auth,
      'Tus-Resumable': '1.0.0',
      'Upload-Offset': String(offset),
      'Content-Type': 'application/offset+octet-stream',
      'Content-Length': String(len),
    }, fs.createReadStream(file, { start: offset, end: offset + len - 1 }));
    if (res.status !== 204) throw new Error(`PATCH at ${offset}: ${res.status} ${res.body}`);
    const next = Number(res.headers['upload-offset']);
    if (next !== offset + len) throw new Error(`PATCH at ${offset}: server offset ${next}`);
    offset = next;
  }
  return url.split('/').pop();
}

const start = process.hrtime.bigint();
const ids = await Promise.all(Array.from({ length: count }, (_, n) => upload(n)));
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
agent.destroy();
console.log(JSON.stringify({ seconds, ids }));
