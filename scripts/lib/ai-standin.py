"""A stand-in AI provider for the schema run and the attack bench: a local
HTTP server speaking the OpenAI chat-completions protocol (POST
{base}/chat/completions, where base ends in /v1), so that
/files/{id}/describe and /chat answer as they do with a real provider. It
checks the request's shape (model, system and user messages, a positive
max_tokens, stream false, the Bearer key) and answers 400 when that is
wrong, which intake turns into 503 ai_unavailable: a malformed provider
request then fails the fuzzing run instead of passing unseen.

GET /count answers what a provider would bill: {"requests": every
well-formed request received (a provider bills a call it has started, even
when its client hangs up before the answer), "in_flight": those not
answered yet, "without_max_tokens": those that set no bound on the
answer's length}.

Usage: ai-standin.py PORT_FILE API_KEY [--port N] [--delay SECS]
                     [--any-max-tokens]
  writes the port it listens on to PORT_FILE (N, or one the system picks);
  --delay: seconds each answer takes (a slow model);
  --any-max-tokens: also takes requests without max_tokens, as providers
  do (an older intake sends none), counting them.
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def well_formed(body, api_key, authorization, any_max_tokens):
    if authorization != f"Bearer {api_key}":
        return False
    messages = body.get("messages")
    max_tokens = body.get("max_tokens")
    bounded = type(max_tokens) is int and max_tokens > 0
    return (
        isinstance(body.get("model"), str)
        and body.get("stream") is False
        and (bounded or (any_max_tokens and max_tokens is None))
        and isinstance(messages, list)
        and [m.get("role") for m in messages] == ["system", "user"]
        and isinstance(messages[0].get("content"), str)
        and isinstance(messages[1].get("content"), (str, list))
    )


class Counts:
    """What the provider received, shared by the handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.without_max_tokens = 0

    def received(self, body):
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            if body.get("max_tokens") is None:
                self.without_max_tokens += 1

    def answered(self):
        with self.lock:
            self.in_flight -= 1

    def view(self):
        with self.lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "without_max_tokens": self.without_max_tokens,
            }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api_key = ""
    delay = 0.0
    any_max_tokens = False
    counts = Counts()

    def do_GET(self):
        if self.path != "/count":
            return self.answer(404, {"error": {"message": "unknown route"}})
        self.answer(200, self.counts.view())

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.path != "/v1/chat/completions" or not isinstance(body, dict):
            return self.answer(404, {"error": {"message": "unknown route"}})
        if not well_formed(body, self.api_key, self.headers.get("authorization"), self.any_max_tokens):
            return self.answer(400, {"error": {"message": "malformed request"}})
        self.counts.received(body)
        try:
            time.sleep(self.delay)
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
        except OSError:
            # The client hung up while the answer was being made.
            pass
        finally:
            self.counts.answered()

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
    parser = argparse.ArgumentParser(description="A stand-in chat-completions provider.")
    parser.add_argument("port_file")
    parser.add_argument("api_key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--any-max-tokens", action="store_true")
    args = parser.parse_args()
    Handler.api_key = args.api_key
    Handler.delay = args.delay
    Handler.any_max_tokens = args.any_max_tokens
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place whole, so a reader never sees a partial port.
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
