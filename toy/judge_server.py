"""A small OpenAI-compatible chat server for fault injection (tests, `python -m benchmarks faults`): it answers,
stalls, fails or talks nonsense on command, and records what it was sent. It stands in for a hosted judge API
misbehaving; the real-server path is tested against `vllm serve`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        # yes | no | garbage | slow | error | unauthorized | quote (repeats the prompt's observations section and
        # nothing else: a judge that quotes what it was given, the way an injected verdict would reach the parser)
        self.mode = "yes"
        self.raw: tuple[int, bytes] | None = None  # answer exactly this (status, body) instead
        self.fail_first = 0  # answer 500 to this many requests first
        self.delay_s = 0.0
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    failing = server.fail_first > 0
                    if failing:
                        server.fail_first -= 1
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.raw is not None:
                    status, raw = server.raw
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                if server.mode == "unauthorized":
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "invalid api key", "type": "invalid_request_error"}}')
                    return
                if failing or server.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "injected"}')
                    return
                text = {
                    "yes": "The observation states it. <judgement>Yes</judgement>",
                    "no": "Not enough. <judgement>No</judgement>",
                    "garbage": "I like turtles.",
                    "quote": None,
                }[server.mode]
                if server.mode == "quote":
                    prompt = body["messages"][-1]["content"]
                    text = prompt.split("### Observations", 1)[-1].split("First give a brief explanation", 1)[0]
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Serves "Yes" verdicts until killed (the multi-host harness runs it on the head host); each request's model
    goes to stdout, one line each, so that a caller can count them."""
    import argparse

    p = argparse.ArgumentParser(description="a stand-in judge: an OpenAI-compatible chat endpoint answering Yes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    server = JudgeServer(a.host, a.port)
    print(f"judge at {server.base_url}", flush=True)
    seen = 0
    while True:
        time.sleep(0.2)
        with server.lock:
            new, seen = server.requests[seen:], len(server.requests)
        for r in new:
            print(f"request model={r['body'].get('model')}", flush=True)


if __name__ == "__main__":
    main()
