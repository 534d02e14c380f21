"""Checkpoints survive a crash: a real training process is SIGKILLed after a checkpoint and in the middle of a
save; a plain rerun resumes from the newest complete checkpoint of the same run and ends where an uninterrupted
run ends. Corrupt or incomplete checkpoints are skipped with a warning naming them; other configs' checkpoints are
moved aside, never deleted."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kospi_ft.training import checkpoints


DRIVER = Path(__file__).parent / "killable_training.py"


def run(base_dir: str, root: Path, mode: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), base_dir, str(root), mode, *extra],
                          capture_output=True, text=True, timeout=600)


def metrics_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def adapter(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / "stage1" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(base_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    assert metrics_of(run(base_dir, root, "none"))["steps"] == 6
    return root


@pytest.fixture(scope="module")
def killed_twice(base_dir, tmp_path_factory):
    """Killed after step 3, rerun and killed while saving checkpoint-4, rerun to the end: (root, last stderr, metrics)."""
    root = tmp_path_factory.mktemp("killed")
    first = run(base_dir, root, "after-step-3")
    assert first.returncode == -signal.SIGKILL
    ckpt = root / "checkpoints" / "stage1"
    assert checkpoints.problem(ckpt / "checkpoint-2") is None and not (root / "stage1").exists()
    second = run(base_dir, root, "while-saving-4")
    assert second.returncode == -signal.SIGKILL
    assert "resuming from" in second.stderr and "checkpoint-2" in second.stderr
    assert (ckpt / "checkpoint-4").is_dir() and "did not finish" in checkpoints.problem(ckpt / "checkpoint-4")
    # DVC deletes a stage's curves (not `persist` outs) before it reruns the stage: the resume rebuilds them.
    shutil.rmtree(root / "live")
    third = run(base_dir, root, "none")
    return root, third.stderr, metrics_of(third)


def test_a_plain_rerun_after_sigkills_resumes_and_matches_an_uninterrupted_run(killed_twice, uninterrupted):
    root, stderr, metrics = killed_twice
    # The half-written checkpoint-4 looked like a checkpoint but had no manifest: skipped, named, kept aside.
    assert "checkpoint-4: no checkpoint.json: the save did not finish" in stderr
    assert (root / "checkpoints" / "stage1" / "corrupt-checkpoint-4").is_dir()
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["steps"] == 6
    whole, resumed = adapter(uninterrupted), adapter(root)
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6)
    assert json.loads((uninterrupted / "stage1.json").read_text())["final_loss"] == pytest.approx(
        metrics["final_loss"], abs=1e-5)
    # The curves hold the checkpoint's steps (from its log history) and continue from it: each step once, in order.
    curve = (root / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in curve] == [1, 2, 3, 4, 5, 6]
    whole_curve = (uninterrupted / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    assert [float(line.split("\t")[1]) for line in curve] == pytest.approx(
        [float(line.split("\t")[1]) for line in whole_curve], abs=1e-5)


def test_a_resumed_runs_train_loss_is_the_uninterrupted_runs(killed_twice, uninterrupted):
    """The mean loss per step over all six steps: transformers' training_loss after the resume from checkpoint-2 is
    steps 3-6's loss divided by six."""
    whole = json.loads((uninterrupted / "stage1.json").read_text())
    _, _, metrics = killed_twice
    assert metrics["resumed_from"] == "checkpoint-2"
    assert metrics["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    curve = (uninterrupted / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    losses = [float(line.split("\t")[1]) for line in curve]
    assert len(losses) == 6 and whole["train_loss"] == pytest.approx(sum(losses) / 6, abs=1e-5)


def complete_copy(uninterrupted: Path, tmp_path: Path, finished: bool = True) -> Path:
    """The uninterrupted run's checkpoint dir; `finished=False`: as if killed after its last checkpoint."""
    copy = tmp_path / "ckpt"
    shutil.copytree(uninterrupted / "checkpoints" / "stage1", copy)
    if not finished:
        (copy / checkpoints.FINISHED).unlink()
    return copy


def recorded_config(ckpt: Path) -> dict:
    return json.loads((ckpt / checkpoints.FINGERPRINT_FILE).read_text())["config"]


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "adapter_model.safetensors").write_bytes((c / "adapter_model.safetensors").read_bytes()[:999]),
     "adapter_model.safetensors has 999 bytes"),
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:-10]), "optimizer.pt has"),
    (lambda c: (c / "trainer_state.json").write_text((c / "trainer_state.json").read_text().replace("1", "2")),
     "trainer_state.json does not match the sha256"),
    (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda c: (c / checkpoints.MANIFEST).unlink(), "the save did not finish"),
])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(uninterrupted, tmp_path, caplog, damage,
                                                                     message):
    ckpt = complete_copy(uninterrupted, tmp_path, finished=False)
    newest, previous = checkpoints.checkpoints(ckpt)[:2]
    assert (newest.name, previous.name) == ("checkpoint-6", "checkpoint-4")
    damage(newest)
    with caplog.at_level("WARNING"):
        assert checkpoints.prepare(ckpt, recorded_config(ckpt)) == str(previous)
    assert message in caplog.text and "checkpoint-6" in caplog.text
    assert (ckpt / "corrupt-checkpoint-6").is_dir()  # kept for inspection, out of the Trainer's way


def test_an_interrupted_runs_checkpoints_are_moved_aside_never_deleted(uninterrupted, tmp_path, caplog):
    ckpt = complete_copy(uninterrupted, tmp_path, finished=False)
    config = recorded_config(ckpt)
    assert checkpoints.prepare(ckpt, config) == str(ckpt / "checkpoint-6")  # same run: resume, no flag
    other = {**config, "params": {**config["params"], "lr": 5e-4}}
    with caplog.at_level("WARNING"):
        assert checkpoints.prepare(ckpt, other) is None
    aside = tmp_path / f"ckpt.{checkpoints.fingerprint(config)}"
    assert "moved to" in caplog.text and (aside / "checkpoint-6" / checkpoints.MANIFEST).is_file()
    assert not checkpoints.checkpoints(ckpt)
    # --restart moves the current run's checkpoints aside too.
    shutil.copytree(aside / "checkpoint-6", ckpt / "checkpoint-6")
    assert checkpoints.prepare(ckpt, other, restart=True) is None
    assert (tmp_path / f"ckpt.{checkpoints.fingerprint(other)}" / "checkpoint-6").is_dir()


def test_a_finished_runs_checkpoints_go_when_another_config_starts(uninterrupted, tmp_path):
    ckpt = complete_copy(uninterrupted, tmp_path)
    config = recorded_config(ckpt)
    assert (ckpt / checkpoints.FINISHED).is_file()  # written after the adapter was saved
    assert checkpoints.prepare(ckpt, {**config, "params": {**config["params"], "lr": 5e-4}}) is None
    assert not checkpoints.checkpoints(ckpt) and not list(tmp_path.glob("ckpt.*"))  # its result is the out


def test_a_finished_run_of_the_same_config_trains_again_from_step_0(uninterrupted, tmp_path, caplog):
    # Not resumed at its final checkpoint: the rerun (new code, `dvc repro -f`) would train one step past the end.
    ckpt = complete_copy(uninterrupted, tmp_path)
    assert (ckpt / checkpoints.FINISHED).is_file() and checkpoints.checkpoints(ckpt)
    with caplog.at_level("INFO", logger=checkpoints.__name__):
        assert checkpoints.prepare(ckpt, recorded_config(ckpt)) is None
    assert not checkpoints.checkpoints(ckpt) and not list(tmp_path.glob("ckpt.*"))
    assert "training it again from step 0" in caplog.text


def test_changed_data_with_the_same_path_and_params_does_not_resume(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    config = checkpoints.run_config(stage="s", backend="hf", base_model="b", revision=None, load_in_4bit=True,
                                    params={"lr": 1}, inputs=[data])
    data.write_text('{"messages": [1]}\n')
    again = checkpoints.run_config(stage="s", backend="hf", base_model="b", revision=None, load_in_4bit=True,
                                   params={"lr": 1}, inputs=[data])
    assert checkpoints.fingerprint(config) != checkpoints.fingerprint(again)
