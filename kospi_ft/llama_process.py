"""llama.cpp in a process of its own: every use of llama-cpp-python (evaluation, quantization, the parity gate).

Why: on the GPU machine (H200, CUDA 13.0, llama-cpp-python 0.3.36 built with GGML_CUDA), llama.cpp's CUDA
libraries crash a process that loaded numpy's, pyarrow's or torch's native libraries before them: `import numpy`
(or pyarrow, or torch) followed by `Llama(..., n_gpu_layers=-1)` dies with SIGSEGV inside
`llama_model_load_from_file`, and `import pyarrow` after llama.cpp's libraries dies with SIGABRT, while the same GGUF
loads and generates in a process that loads llama.cpp first and never loads pyarrow (the `llama-diag` rows of
benchmarks/results/h200-7b-real-e2e.jsonl). The stages need pyarrow (the data modules) and torch (likelihood
metrics, the merge), so llama.cpp runs in a child process that imports llama_cpp before anything else and never
imports pyarrow, pandas or torch:

    python -m kospi_ft.llama_process '{"call": "kospi_ft.export.quantize:quantize_here", "kwargs": {...}}'
    python -m kospi_ft.llama_process '{"session": {"gguf": "...", "options": {...}}}'   # then requests on stdin

A request may carry a JSON `schema`: its reply is then decoded guided by it (kospi_ft.guidance). A
`generate_many` request decodes many replies in one batch and answers one line per reply as each ends.

`call` runs one function there and returns its JSON result; `Session` keeps one GGUF loaded for many generations
(`kospi_ft.evaluation.llama_session.LlamaSession`). Every reply is one JSON line on the child's original stdout
(C-level output such as llama.cpp's logs goes to stderr, which the child shares with its parent). A PipelineError
there is raised here with its class and message; a crash is one error naming the signal, and faulthandler prints
the child's Python stack to stderr.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import PipelineError

HEAVY = ("numpy", "pyarrow", "pandas", "torch")  # what must not be loaded before llama.cpp's libraries


def _command(request: dict) -> tuple[list[str], dict]:
    """The child's command line and environment (this checkout's package importable from any cwd)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return [sys.executable, "-m", __name__, json.dumps(request)], env


def _ended(proc: subprocess.Popen, what: str) -> PipelineError:
    rc = proc.wait()
    how = f"signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit status {rc}"
    return PipelineError(f"{what}: the llama.cpp process ended ({how}) without a reply; its output above says why")


def _raise(reply: dict) -> None:
    """Raise the child's error as the same PipelineError class, with its message."""
    cls: type[PipelineError] = PipelineError
    if reply.get("type"):
        module, _, name = reply["type"].partition(":")
        found = getattr(importlib.import_module(module), name, None)
        if isinstance(found, type) and issubclass(found, PipelineError):
            cls = found
    raise cls(reply["error"])


def _read(proc: subprocess.Popen, what: str) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise _ended(proc, what)
    reply = json.loads(line)
    if not reply.pop("ok"):
        _raise(reply)
    return reply


def call(target: str, **kwargs: Any) -> Any:
    """`module:function(**kwargs)` in a llama.cpp process; its JSON-able result. The function imports llama_cpp
    itself; its module must not import pyarrow, pandas or torch."""
    cmd, env = _command({"call": target, "kwargs": kwargs})
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                            encoding="utf-8")
    try:
        return _read(proc, target)["result"]
    finally:
        proc.stdout.close()
        proc.wait()


class Session:
    """One GGUF loaded in a llama.cpp process for many generations. `info` is the load's reply (pid, gpu_offload,
    `preloaded`: the heavy modules the process held when llama.cpp loaded, none; `modules`: those it holds)."""

    def __init__(self, gguf: Path, options: dict, what: str) -> None:
        self.what = what
        cmd, env = _command({"session": {"gguf": str(gguf), "options": options}})
        # stderr is inherited: llama.cpp's messages and a crash's stack reach the stage's log.
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      encoding="utf-8", bufsize=1)
        try:
            self.info = _read(self._proc, what)
        except BaseException:
            self.kill()
            raise

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def _send(self, op: dict) -> None:
        try:
            self._proc.stdin.write(json.dumps(op) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise _ended(self._proc, self.what) from None

    def request(self, **op) -> dict:
        self._send(op)
        return _read(self._proc, self.what)

    def stream(self, **op):
        """The replies to one request that answers with many lines, as they come, up to its `done` line."""
        self._send(op)
        while not (reply := _read(self._proc, self.what)).get("done"):
            yield reply

    def kill(self) -> None:
        try:
            self._proc.kill()
        finally:
            self._proc.wait()

    def close(self) -> None:
        if self._proc.poll() is not None:
            return
        try:
            self._proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.kill()


def gpu_offload_here() -> bool:
    """(In the llama.cpp process) whether this llama-cpp-python build can offload layers to a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# ---- the child ----------------------------------------------------------------------------------------------

def _serve(argv: list[str], preloaded: list[str]) -> int:
    import faulthandler
    import traceback

    faulthandler.enable()
    # Replies go to the original stdout; fd 1 (and sys.stdout) then point at stderr, so that nothing llama.cpp or
    # a library prints can corrupt a reply.
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(**fields) -> None:
        channel.write(json.dumps(fields, ensure_ascii=False) + "\n")

    def failed(err: BaseException) -> None:
        if isinstance(err, PipelineError):
            reply(ok=False, error=str(err), type=f"{type(err).__module__}:{type(err).__qualname__}")
        else:
            traceback.print_exc()
            reply(ok=False, error=f"{type(err).__name__}: {err}", type=None)

    request = json.loads(argv[0])
    if "call" in request:
        module, _, name = request["call"].partition(":")
        try:
            reply(ok=True, result=getattr(importlib.import_module(module), name)(**request.get("kwargs", {})))
        except Exception as err:  # noqa: BLE001  (reported to the parent, which raises it)
            failed(err)
            return 2
        return 0
    from .evaluation.llama_session import LlamaSession

    try:
        session = LlamaSession(Path(request["session"]["gguf"]), **request["session"].get("options", {}))
    except Exception as err:  # noqa: BLE001
        failed(err)
        return 2
    reply(ok=True, description=session.description, preloaded=preloaded, pid=os.getpid(),
          modules=sorted(name for name in HEAVY if name in sys.modules), gpu_offload=gpu_offload_here())
    try:
        for line in sys.stdin:
            op = json.loads(line)
            if op.get("op") == "close":
                break
            try:
                if op.get("op") == "generate_many":
                    # One line per reply as it ends (the parent's progress), then the end of the batch.
                    session.generate_many(op["requests"], int(op["max_new_tokens"]), int(op["parallel"]),
                                          on_reply=lambda index, r: reply(ok=True, index=index, **r))
                    reply(ok=True, done=True)
                else:
                    reply(ok=True, **session.generate(op["messages"], int(op["max_new_tokens"]), op.get("seed"),
                                                      schema=op.get("schema")))
            except Exception as err:  # noqa: BLE001
                failed(err)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    _preloaded = sorted(name for name in HEAVY if name in sys.modules)
    try:
        import llama_cpp  # noqa: F401  (first: its CUDA runtime and cuBLAS load before any other native library)
    except ImportError as _err:
        print(json.dumps({"ok": False, "type": None, "error": f"llama-cpp-python does not import ({_err}): install "
                          f"the stack with `bash scripts/setup.sh` (CUDA: `bash scripts/setup.sh cuda`)"}),
              flush=True)
        sys.exit(2)
    sys.exit(_serve(sys.argv[1:], _preloaded))
