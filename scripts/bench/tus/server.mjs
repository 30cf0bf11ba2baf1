// tus server (@tus/server + @tus/s3-store) for the upload benchmark.
// Config comes from the environment; it listens on 127.0.0.1:$TUS_PORT.
import http from 'node:http';
import { Server } from '@tus/server';
import { S3Store } from '@tus/s3-store';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing env ${name}`);
  return v;
};

const store = new S3Store({
  partSize: Number(env('TUS_PART_BYTES')),
  s3ClientConfig: {
    bucket: env('TUS_S3_BUCKET'),
    endpoint: env('TUS_S3_ENDPOINT'),
    region: 'us-east-1',
    forcePathStyle: true,
    // The same checksum policy intake uses against S3-compatible servers,
    // so both sides hash what they must and nothing more.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    credentials: {
      accessKeyId: env('TUS_S3_ACCESS_KEY'),
      secretAccessKey: env('TUS_S3_SECRET_KEY'),
    },
  },
});

const tus = new Server({
  path: '/files',
  datastore: store,
  // Log the cause of any failed request; the response stays the default one.
  onResponseError: (_req, err) => {
    console.error(err);
  },
});
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(Number(env('TUS_PORT')), '127.0.0.1');
