"""Temp outs and scratch of a killed stage: named for their process, swept by whichever stage starts next, ignored
by git meanwhile."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kospi_ft import atomic, params


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_what_dead_processes_left(tmp_path):
    dead = _dead_pid()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            gone = [tmp_path / f".stage3.{dead}-k1ll.work", tmp_path / f".train.jsonl.{dead}-ab_c.tmp"]
            kept = [tmp_path / f".stage2.{os.getpid()}-mine.tmp",          # this process is writing it
                    tmp_path / f".stage1.{alive.pid}-busy.work",           # a running stage's scratch
                    tmp_path / ".notes.tmp", tmp_path / "model.tmp", tmp_path / "README.md"]
            gone[0].mkdir()
            (gone[0] / "model-f16.gguf").write_bytes(b"GGUF")
            for path in [*gone[1:], *kept]:
                path.write_text("x")
            assert sorted(atomic.sweep([tmp_path, tmp_path / "missing"])) == sorted(gone)
            assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
        finally:
            alive.kill()


def test_what_a_killed_stage_left_is_swept_by_the_next_stage_and_ignored_by_git(tmp_path, project_root,
                                                                               monkeypatch):
    """A process SIGKILLed while writing an out and an export's scratch leaves both; the next stage to start (any
    stage: DVC may restore the killed one from its run cache) removes them, and `git add -A` never sees them."""
    from stages import _main

    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(params, "PARAMS_FILE", Path("params.yaml"))
    paths = params.load_paths()
    killed = textwrap.dedent(f"""
        import os, signal
        from kospi_ft import atomic
        work = atomic.scratch_dir({str(paths.gguf_dir / "stage3")!r})
        (work / "model-f16.gguf").write_bytes(b"GGUF" * 1000)
        with atomic.atomic_path({str(paths.synthetic)!r}) as tmp:
            tmp.write_text("half a line")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": str(project_root)})
    assert proc.returncode == -signal.SIGKILL
    left = sorted([*paths.gguf_dir.iterdir(), *paths.synthetic.parent.iterdir()])
    assert sorted(p.suffix for p in left) == [".tmp", ".work"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *(str(p) for p in left)],
                             cwd=project_root, capture_output=True, text=True)
    assert ignored.returncode == 0 and len(ignored.stdout.split()) == 2

    ran = []
    _main.run(lambda argv: ran.append(argv))
    assert ran == [None]
    assert list(paths.gguf_dir.iterdir()) == [] and list(paths.synthetic.parent.iterdir()) == []


@pytest.mark.parametrize("name", ["dvc.lock", "params.yaml", "kospi_ft/atomic.py", "data/logs/example.jsonl"])
def test_gitignore_keeps_the_projects_own_files(project_root, name):
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=project_root)
    assert ignored.returncode == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_or_read_only_checkout_is_one_line(code, capsys, tmp_path, monkeypatch):
    from stages import _main

    monkeypatch.chdir(tmp_path)  # no params here: nothing to sweep

    def main(argv):
        raise OSError(code, os.strerror(code), "models/gguf/.stage3.1-x.work/model-f16.gguf")

    with pytest.raises(SystemExit) as exit_:
        _main.run(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "models/gguf/.stage3.1-x.work/model-f16.gguf" in err
    assert os.strerror(code) in err and "Traceback" not in err


def test_other_os_errors_are_not_hidden(tmp_path, monkeypatch):
    from stages import _main

    monkeypatch.chdir(tmp_path)

    def main(argv):
        raise FileNotFoundError(errno.ENOENT, "gone", "x")

    with pytest.raises(FileNotFoundError):
        _main.run(main)
