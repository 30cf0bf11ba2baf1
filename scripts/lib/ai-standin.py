"""A stand-in AI provider for the schema run: a local HTTP server speaking the
OpenAI chat-completions protocol (POST {base}/chat/completions, where base
ends in /v1), so that /files/{id}/describe and /chat answer as they do with
a real provider. It checks the request's shape (model, system and user
messages, a positive max_tokens, stream false, the Bearer key) and answers
400 when that is wrong, which intake turns into 503 ai_unavailable: a
malformed provider request then fails the fuzzing run instead of passing
unseen.

Usage: ai-standin.py PORT_FILE API_KEY (prints nothing; writes the port).
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def well_formed(body, api_key, authorization):
    if authorization != f"Bearer {api_key}":
        return False
    messages = body.get("messages")
    return (
        isinstance(body.get("model"), str)
        and body.get("stream") is False
        and type(body.get("max_tokens")) is int
        and body["max_tokens"] > 0
        and isinstance(messages, list)
        and [m.get("role") for m in messages] == ["system", "user"]
        and isinstance(messages[0].get("content"), str)
        and isinstance(messages[1].get("content"), (str, list))
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api_key = ""

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.path != "/v1/chat/completions" or not isinstance(body, dict):
            return self.answer(404, {"error": {"message": "unknown route"}})
        if not well_formed(body, self.api_key, self.headers.get("authorization")):
            return self.answer(400, {"error": {"message": "malformed request"}})
        self.answer(200, {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": 1764000000,
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "A stand-in answer."},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    def answer(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    port_file, Handler.api_key = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place whole, so a reader never sees a partial port.
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
