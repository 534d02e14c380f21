"""The install files: the CUDA stack resolves on its own to the pinned torch with unsloth, bitsandbytes and trl in
it, and its llama.cpp build cannot be served from pip's cache of the CPU build."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line, following `-r` includes."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("-r "):
            out |= pins(path.parent / line[3:].strip())
        elif m := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line):
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def index_reachable(host: str = "pypi.org") -> bool:
    try:
        with socket.create_connection((host, 443), timeout=5):
            return True
    except OSError:
        return False


def test_cuda_set_resolves_on_its_own_to_the_pinned_stack(tmp_path):
    if not index_reachable():
        pytest.skip("no package index answers from here")
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "-r", str(ROOT / "requirements-cuda.txt")],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and re.search(r"(?i)(connection|timed out|temporary failure|network)", r.stderr):
        pytest.skip(f"the index did not answer: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    wanted = pins(ROOT / "requirements-cuda.txt")
    for name in ("torch", "torchvision", "xformers", "trl", "unsloth", "unsloth-zoo", "bitsandbytes",
                 "transformers", "peft", "accelerate"):
        assert resolved.get(name) == wanted[name], (name, resolved.get(name), wanted[name])
    assert resolved["torch"] == "2.11.0" and resolved["trl"] == "1.15.0"
    assert "llama-cpp-python" in resolved and "gguf" not in resolved  # the converter ships its own gguf


def test_both_stacks_share_every_pin_but_the_stack_specific_ones():
    cpu, cuda = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-cuda.txt")
    differing = {k for k in set(cpu) & set(cuda) if cpu[k] != cuda[k]}
    assert differing == {"torch", "trl"}
    assert (cpu["torch"], cpu["trl"]) == ("2.13.0", "1.16.0")


def test_cuda_llama_cpp_build_has_its_own_wheel_cache_entry():
    """pip's wheel cache is keyed by the sdist link (URL, hash, subdirectory), not by config settings: the CUDA
    requirement must differ from the index link requirements.txt builds, or the cached CPU wheel comes back."""
    try:
        from pip._internal.cache import SimpleWheelCache
        from pip._internal.models.link import Link
    except ImportError as err:  # pip's internals moved: nothing to check against
        pytest.skip(f"pip internals unavailable: {err}")
    line = next(l for l in (ROOT / "requirements-cuda.txt").read_text().splitlines()
                if l.startswith("llama-cpp-python @ "))
    url = line.split(" @ ", 1)[1].split()[0]
    assert "GGML_CUDA=on" in line
    cuda_link = Link(url)
    index_link = Link(url.split("&subdirectory=")[0])  # what the index hands requirements.txt's `==` pin
    version = pins(ROOT / "requirements.txt")["llama-cpp-python"]
    assert urlparse(index_link.url).path.endswith(f"llama_cpp_python-{version}.tar.gz")
    assert cuda_link.hash == index_link.hash  # the very same sdist
    cache = SimpleWheelCache("/nonexistent-cache")
    assert cache.get_path_for_link(cuda_link) != cache.get_path_for_link(index_link)
