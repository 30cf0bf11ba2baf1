// Stands in front of the S3 test server with the CORS rule a real bucket
// needs for the dashboard (AWS S3, R2 and MinIO take the same rule): the
// page PUTs presigned parts cross-origin and reads each part's ETag.
// Requests pass through unchanged, Host included, so signatures still hold.
//
//   node cors-proxy.mjs <listen port> <upstream port>

import http from 'node:http';

const [listenPort, upstreamPort] = process.argv.slice(2).map(Number);

function corsHeaders(req) {
  return {
    'access-control-allow-origin': req.headers.origin || '*',
    'access-control-expose-headers': 'ETag',
    vary: 'Origin',
  };
}

const server = http.createServer((req, res) => {
  if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) {
    res.writeHead(204, {
      ...corsHeaders(req),
      'access-control-allow-methods': 'GET, PUT, HEAD',
      'access-control-allow-headers': req.headers['access-control-request-headers'] || '',
      'access-control-max-age': '600',
    });
    res.end();
    return;
  }
  const upstream = http.request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers },
    (answer) => {
      res.writeHead(answer.statusCode, { ...answer.headers, ...corsHeaders(req) });
      answer.pipe(res);
    },
  );
  upstream.on('error', () => {
    res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
});

server.listen(listenPort, '127.0.0.1', () => console.log(`cors proxy on ${listenPort}`));
