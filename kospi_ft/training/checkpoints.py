"""Training checkpoints that survive a crash: resume by default, never delete, never trust a half-written save.

`checkpoints/<stage>/` (paths.checkpoints_dir) holds the Trainer's `checkpoint-<step>` dirs and a `config.json`
with the fingerprint of the run that wrote them: the stage's params, the backend, the base model and the sha256 of
the data and of the adapter it starts from. A rerun (a plain `dvc repro` after a crash, or the stage's command)
resumes from the newest complete checkpoint of the same fingerprint without any flag; `--restart` starts over.
Checkpoints of an interrupted run with another fingerprint, and those a restart leaves behind, are moved aside to
`checkpoints/<stage>.<fingerprint>/`, never deleted (a 20-hour Stage 1 is not thrown away by a params typo). Once
a run has saved its adapter (`mark_finished`), its checkpoints are removed when the stage runs again, with
any config: the result they led to is the stage's out (and in the DVC cache), and a rerun of the same config
(changed code, `dvc repro -f`) trains from step 0.

Complete means: the Trainer finished writing the dir and `ManifestCallback` then wrote `checkpoint.json` listing
every file with its size and sha256. The Trainer writes into `checkpoint-<step>` in place, so a kill during a save
leaves a dir without that manifest; a later truncation or corruption no longer matches it. Such a checkpoint is
renamed `corrupt-checkpoint-<step>` (kept for inspection, out of the Trainer's sight) with a warning naming it,
and the previous one is used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from .. import atomic
from . import distributed

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "config.json"
FINISHED = "finished.json"
MANIFEST = "checkpoint.json"
PREFIX = "checkpoint-"
CORRUPT_PREFIX = "corrupt-"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


#: Files larger than this are identified by size and modification time instead of their sha256: hashing a local
#: 7B base (15 GB) would add ~10 s to every training stage's start, to tell apart files that never change in place.
HASH_LIMIT = 256 * 2**20


def _file_digest(path: Path) -> str:
    if path.stat().st_size > HASH_LIMIT:
        return f"size:{path.stat().st_size}:mtime:{path.stat().st_mtime_ns}"
    return sha256_file(path)


def content_digest(path: str | os.PathLike) -> str:
    """A digest of a file, or of a dir's files (relative names + contents); the path itself when it is neither (a
    hub id, whose revision the caller adds)."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_digest(f)}\n".encode())
        return h.hexdigest()
    return f"name:{path}"


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def step_of(checkpoint: str | os.PathLike) -> int:
    """The optimizer step a `checkpoint-<step>` dir was saved at."""
    return _step(Path(checkpoint))


def checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The Trainer's checkpoint dirs, newest (highest step) first."""
    found = [p for p in Path(checkpoint_dir).glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=_step, reverse=True)


def write_manifest(checkpoint: Path) -> None:
    """Record every file of a finished checkpoint with its size and sha256 (written last, atomically)."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST)
    atomic.write_json(checkpoint / MANIFEST, {
        "files": {p.relative_to(checkpoint).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                  for p in files}})


def problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete and intact."""
    manifest = checkpoint / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST}: the save did not finish (killed while writing it?)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    for name, want in sorted(files.items()):
        f = checkpoint / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, {want['bytes']} were written (truncated?)"
        if sha256_file(f) != want["sha256"]:
            return f"{name} does not match the sha256 recorded when it was written (corrupted)"
    if "trainer_state.json" not in files:
        return "trainer_state.json was never written"
    return None


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def mark_finished(checkpoint_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Record that the run in `checkpoint_dir` completed and saved its result to `output_dir`."""
    atomic.write_json(Path(checkpoint_dir) / FINISHED, {"output": str(output_dir)})


def _move_aside(checkpoint_dir: Path, old_fingerprint: str | None, why: str) -> None:
    import shutil

    if not checkpoint_dir.exists() or all(p.name == FINGERPRINT_FILE for p in checkpoint_dir.iterdir()):
        return  # nothing trained there
    finished = checkpoint_dir / FINISHED
    if finished.is_file():
        output = json.loads(finished.read_text(encoding="utf-8")).get("output")
        shutil.rmtree(checkpoint_dir)
        log.info("%s: %s; removed the checkpoints of a finished run (its result is %s)", checkpoint_dir, why, output)
        return
    aside = _unique(checkpoint_dir.with_name(f"{checkpoint_dir.name}.{old_fingerprint or 'unknown'}"))
    os.replace(checkpoint_dir, aside)
    log.warning("%s: %s; its checkpoints were moved to %s (delete that dir when you no longer need them)",
                checkpoint_dir, why, aside)


def _recorded(checkpoint_dir: Path) -> dict:
    try:
        found = json.loads((checkpoint_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def recorded_fingerprint(checkpoint_dir: Path) -> str | None:
    """The fingerprint of the run that wrote `checkpoint_dir`, or None (none recorded, or unreadable)."""
    found = _recorded(checkpoint_dir).get("fingerprint")
    return found if isinstance(found, str) else None


def prepare(checkpoint_dir: str | os.PathLike, config: dict, restart: bool = False) -> str | None:
    """The newest complete checkpoint of this config to resume from, or None to train from step 0.

    Afterwards `checkpoint_dir` exists and carries this config's fingerprint."""
    checkpoint_dir = Path(checkpoint_dir)
    ours = fingerprint(config)
    recorded = recorded_fingerprint(checkpoint_dir)
    # A finished run is not resumed: its last checkpoint is the stage's out already, and the Trainer resumed at
    # its final step would train one step more. A rerun of the same config (new code, `dvc repro -f`) starts over.
    finished = (checkpoint_dir / FINISHED).is_file()
    resume_from = None
    if recorded == ours and not restart and not finished:
        for ckpt in checkpoints(checkpoint_dir):
            why = problem(ckpt)
            if why is None:
                resume_from = str(ckpt)
                break
            corrupt = _unique(ckpt.with_name(CORRUPT_PREFIX + ckpt.name))
            os.replace(ckpt, corrupt)
            log.warning("%s: %s; skipped (kept as %s), trying the one before", ckpt, why, corrupt.name)
        if resume_from:
            log.info("resuming from %s (same config: %s)", resume_from, ours)
    elif restart:
        _move_aside(checkpoint_dir, recorded, "--restart")
    elif recorded == ours:
        _move_aside(checkpoint_dir, recorded, "the run of this config finished; training it again from step 0")
    else:
        _move_aside(checkpoint_dir, recorded, f"checkpoints come from another config ({recorded} != {ours})")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": ours, "config": config}
    if resume_from is not None:
        # The layouts that trained the steps the resume keeps (layouts.record; outside the fingerprint).
        step = _step(Path(resume_from))
        kept = [x for x in _recorded(checkpoint_dir).get("layouts", []) if x.get("from_step", 0) < step]
        record["layouts"] = kept
    atomic.write_json(checkpoint_dir / FINGERPRINT_FILE, record)
    (checkpoint_dir / FINISHED).unlink(missing_ok=True)  # a session starts: finished again only once it saves
    return resume_from


def resume_point(checkpoint_dir: str | os.PathLike, config: dict) -> str | None:
    """What `prepare` chose, read without changing anything (the other DDP ranks, after rank 0 prepared)."""
    checkpoint_dir = Path(checkpoint_dir)
    if recorded_fingerprint(checkpoint_dir) != fingerprint(config):
        return None
    return next((str(c) for c in checkpoints(checkpoint_dir) if problem(c) is None), None)


def prepare_on_all_ranks(checkpoint_dir: str | os.PathLike, config: dict, restart: bool = False) -> str | None:
    """`prepare` on rank 0 (the only writer) while the other DDP ranks wait, then the same answer on every rank."""
    distributed.init_process_group()
    resume_from = prepare(checkpoint_dir, config, restart) if distributed.is_main() else None
    distributed.barrier()
    return resume_from if distributed.is_main() else resume_point(checkpoint_dir, config)


def manifest_callback():
    """A TrainerCallback that writes the manifest of each checkpoint once the Trainer has finished saving it."""
    from transformers import TrainerCallback

    class ManifestCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            distributed.barrier()  # every rank has written its RNG state into the checkpoint
            if distributed.is_main():
                ckpt = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
                if ckpt.is_dir():
                    write_manifest(ckpt)

    return ManifestCallback()


def run_config(*, stage: str, backend: str, base_model: str, revision: str | None, load_in_4bit: bool,
               params: dict, inputs: Iterable[str | os.PathLike]) -> dict:
    """What identifies a training run for resuming: every input's content, not just its path."""
    # The process count too: a resumed run must split the effective batch and the RNG states as the first did.
    return {"stage": stage, "backend": backend, "base_model": base_model, "revision": revision,
            "base_digest": content_digest(base_model), "load_in_4bit": load_in_4bit, "params": params,
            "processes": distributed.world_size(), "inputs": {str(p): content_digest(p) for p in inputs}}
