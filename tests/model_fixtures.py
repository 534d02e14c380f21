"""Real tiny models and a fake Ollama server, shared by the tests that run the evaluation backends
(test_evaluation, test_model_rejects). Nothing here depends on pipeline outputs in the working tree."""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
from pathlib import Path
from typing import Callable, Iterator


def build_tiny_hf(out: Path, layers: int = 1):
    """The embedded base model's architecture at its smallest allowed size (1 layer, or `layers`), saved like
    models/base. Returns (dir, tokenizer)."""
    from kospi_ft.base_model import TinyShape, build_tiny_model
    from kospi_ft.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    model = build_tiny_model(TinyShape(hidden_size=256, intermediate_size=256, num_hidden_layers=layers), 0, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, tokenizer


def build_tiny_gguf(hf_dir: Path, out: Path) -> Path:
    """A Q4_K_M GGUF of `hf_dir` in `out`, by the export's own converter and quantizer (its merge and parity
    steps are tested in test_export, and would add ~40 s here)."""
    from kospi_ft.export.chain import gguf_name
    from kospi_ft.export.gguf import convert_to_gguf
    from kospi_ft.export.quantize import quantize

    f16 = convert_to_gguf(hf_dir, out / "model-f16.gguf", "f16")
    quantize(f16, out / gguf_name("Q4_K_M"), "Q4_K_M", threads=1, progress=False)
    return out / gguf_name("Q4_K_M")


class FakeOllama(http.server.BaseHTTPRequestHandler):
    """Speaks the documented non-streaming /api/chat and /api/version JSON. Replies come from `server.replies`
    (model name -> reply text, or a function of the request body returning it)."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/version":
            self._send(200, {"version": "0.0.0-test"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        reply = self.server.replies.get(body.get("model"))
        if callable(reply):
            reply = reply(body)
        if self.path != "/api/chat" or reply is None:
            self._send(404, {"error": f"model '{body.get('model')}' not found, try pulling it first"})
            return
        self._send(200, {"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                         "message": {"role": "assistant", "content": reply}, "done": True, "done_reason": "stop",
                         "total_duration": 5_000_000, "load_duration": 1_000, "prompt_eval_count": 21,
                         "prompt_eval_duration": 1_000_000, "eval_count": 7, "eval_duration": 3_000_000})


@contextlib.contextmanager
def fake_ollama(replies: dict[str, str | Callable[[dict], str]]) -> Iterator[http.server.ThreadingHTTPServer]:
    """A FakeOllama on a free local port; `server.requests` collects (path, body) of every POST."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    server.requests = []
    server.replies = replies
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
