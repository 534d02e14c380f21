"""The install files: the CUDA stack resolves on its own to the pinned torch with unsloth, bitsandbytes and trl in
it, names no download URL, and its llama.cpp build cannot be served from pip's cache of the CPU build."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

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
    # llama-cpp-python is built by scripts/llama_cuda.sh; the converter ships its own gguf.
    assert "llama-cpp-python" not in resolved and "gguf" not in resolved


def test_both_stacks_share_every_pin_but_the_stack_specific_ones():
    cpu, cuda = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-cuda.txt")
    differing = {k for k in set(cpu) & set(cuda) if cpu[k] != cuda[k]}
    assert differing == {"torch", "trl"}
    assert (cpu["torch"], cpu["trl"]) == ("2.13.0", "1.16.0")


def test_requirements_name_packages_not_download_urls():
    """Users behind a company mirror or a private index install by name: no line points at one package host."""
    for name in ("requirements.txt", "requirements-common.txt", "requirements-cuda.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            code = line.split("#")[0]
            assert "://" not in code and " @ " not in code, (name, line)


FAKE_PIP = r"""#!/usr/bin/env bash
# A stand-in interpreter: logs each pip call with its CMAKE_ARGS; `pip wheel` writes a wheel (with or without
# the CUDA backend, per FAKE_CUDA), `-m zipfile -l` lists it.
echo "CMAKE_ARGS=${CMAKE_ARGS:-} $*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m zipfile" ]; then exec python3 "$@"; fi
if [ "$3" = wheel ]; then
  while [ $# -gt 0 ]; do [ "$1" = -w ] && out=$2; shift; done
  mkdir -p "$out"
  lib=llama_cpp/lib/libggml-cpu.so; [ "${FAKE_CUDA:-1}" = 1 ] && lib=llama_cpp/lib/libggml-cuda.so
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').writestr(sys.argv[2], b'')" \
    "$out/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl" "$lib"
fi
"""


def test_cuda_llama_cpp_build_never_comes_from_pips_cache(tmp_path):
    """scripts/llama_cuda.sh builds requirements.txt's llama-cpp-python with GGML_CUDA on, bypassing pip's cache
    (keyed by the sdist, where a CPU install leaves its CPU wheel), keeps the wheel in a cache of its own keyed by
    version and CMake flags, installs it over any CPU build, reuses it on the next install, and refuses a build
    that has no CUDA backend."""
    fake, log = tmp_path / "python", tmp_path / "pip.log"
    fake.write_text(FAKE_PIP)
    fake.chmod(0o755)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_LOG": str(log),
           "KOSPI_FT_WHEELS": str(tmp_path / "wheels")}
    script = ["bash", str(ROOT / "scripts" / "llama_cuda.sh"), str(fake)]
    subprocess.run(script, env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    version = pins(ROOT / "requirements.txt")["llama-cpp-python"]
    build = [c for c in calls if " wheel " in f" {c} "]
    assert len(build) == 1 and "-DGGML_CUDA=on" in build[0].split(" -m ")[0]
    assert all(flag in build[0].split() for flag in ("--no-cache-dir", "--no-binary", f"llama-cpp-python=={version}"))
    assert any("--force-reinstall --no-deps" in c and c.endswith(".whl") for c in calls)
    built = list((tmp_path / "wheels").glob("llama-cpp-python-*-cuda-*/*.whl"))
    assert len(built) == 1 and not list((tmp_path / "wheels").glob("*.tmp"))
    log.unlink()
    subprocess.run(script, env=env, check=True, capture_output=True)   # the next CUDA install: no rebuild
    assert not [c for c in log.read_text().splitlines() if " wheel " in f" {c} "]
    # Other CMake flags are another build; one without the CUDA backend is refused, neither installed nor kept.
    log.unlink()
    r = subprocess.run(script, env={**env, "CMAKE_ARGS": "-DGGML_CUDA=off", "FAKE_CUDA": "0"}, capture_output=True,
                       text=True)
    assert r.returncode == 3 and "no CUDA backend" in r.stderr
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [built[0].parent.name]
    assert not [c for c in log.read_text().splitlines() if " install " in f" {c} "]
