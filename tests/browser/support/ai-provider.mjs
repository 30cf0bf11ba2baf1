// A stand-in for the AI provider (a third-party service), speaking the
// OpenAI chat-completions protocol intake's client speaks
// (src/ai/client.rs): POST <base>/chat/completions with a system and a
// user message, answered with choices[0].message.content. Its answers are
// made from what it was sent, so a test can see what reached the model:
//   - a description names what it was given (an image as a data URL, or
//     the start of a text);
//   - a chat reply repeats the message and names the files of its context.
// GET /requests lists every request body received, for the tests.
//
//   node ai-provider.mjs <listen port>

import http from 'node:http';

const [port] = process.argv.slice(2).map(Number);
const received = [];

function text(content) {
  if (typeof content === 'string') return content;
  return content
    .filter((p) => p.type === 'text')
    .map((p) => p.text)
    .join('\n');
}

function answer(body) {
  const [system, user] = body.messages;
  if (system.content.startsWith('You are the assistant')) {
    const files = [...system.content.matchAll(/^## "(.+)" \(/gm)].map((m) => m[1]);
    const described = [...system.content.matchAll(/^Description: (.+)$/gm)].length;
    return (
      `Stand-in reply to “${text(user.content)}”: ` +
      (files.length ? `${files.length} files in context (${files.join(', ')}), ${described} described.` : 'no files in context.')
    );
  }
  const image = Array.isArray(user.content) && user.content.find((p) => p.type === 'image_url');
  if (image) {
    const type = /^data:([^;,]+)/.exec(image.image_url.url)?.[1] || 'unknown';
    return `A stand-in look at an image sent as ${type}.`;
  }
  return `A stand-in summary of a text that begins “${text(user.content).trim().slice(0, 24)}”.`;
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/requests') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(received));
    return;
  }
  if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: 'no such route', type: 'invalid_request_error' } }));
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'body is not JSON', type: 'invalid_request_error' } }));
      return;
    }
    received.push({ authorization: req.headers.authorization || null, body });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        id: `chatcmpl-standin-${received.length}`,
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: body.model,
        choices: [{ index: 0, message: { role: 'assistant', content: answer(body) }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
      }),
    );
  });
});

server.listen(port, '127.0.0.1', () => console.log(`AI stand-in on 127.0.0.1:${port}`));
