"""DDP through torchrun, two gloo processes on the CPU: after one optimizer step both ranks hold the same LoRA
weights, changed from the start; only rank 0 writes, and what it saves is its own weights; DPO starts at ln 2 on
every rank (the Stage 2 reference survives DDP). `bash scripts/test.sh -m ddp` runs these."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kospi_ft.errors import ParamsError
from kospi_ft.training import checkpoints, distributed

from model_fixtures import build_tiny_hf

pytestmark = pytest.mark.ddp
DRIVER = Path(__file__).parent / "ddp_training.py"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    base, _ = build_tiny_hf(tmp_path_factory.mktemp("base"))
    root = tmp_path_factory.mktemp("ddp")
    # The launcher the stages use (distributed.launch_command), on the driver script instead of a stage module.
    launcher = distributed.launch_command(2, "x", [])[:-2]
    r = subprocess.run([*launcher, str(DRIVER), str(base), str(root)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return root


def test_both_ranks_step_to_the_same_weights_and_rank0_saves_them(ddp_run):
    rank0, rank1 = (load_file(str(ddp_run / f"rank{r}" / "lora.safetensors")) for r in (0, 1))
    start = load_file(str(ddp_run / "rank0" / "lora_start.safetensors"))
    assert rank0.keys() == rank1.keys() == start.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert all(not torch.equal(rank0[n], start[n]) for n in rank0 if "lora_B" in n)  # B starts at 0
    saved = load_file(str(ddp_run / "stage1" / "adapter_model.safetensors"))
    assert {n.replace(".default", "") for n in rank0} == set(saved)
    for name, value in rank0.items():
        assert torch.equal(saved[name.replace(".default", "")], value), name


def test_only_rank0_writes(ddp_run):
    metrics = json.loads((ddp_run / "stage1.json").read_text())
    # One writer: the effective batch is the params' (1 x 2), each of the 2 processes taking 1 micro-batch.
    assert (metrics["processes"], metrics["effective_batch"], metrics["steps"]) == (2, 2, 1)
    curve = (ddp_run / "live" / "stage1" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert len(curve) == 2  # the header and step 1 once (two writers would clean or repeat it)
    ckpt = ddp_run / "checkpoints" / "stage1" / "checkpoint-1"
    assert checkpoints.problem(ckpt) is None
    files = json.loads((ckpt / checkpoints.MANIFEST).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(files)  # each rank's RNG, in rank 0's manifest
    assert (ddp_run / "stage3" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in ddp_run.iterdir()) == sorted(
        ["checkpoints", "live", "rank0", "rank1", "stage1", "stage1.json", "stage3", "stage3.json"])


def test_dpo_starts_at_ln2_on_every_rank(ddp_run):
    for r in (0, 1):
        first = json.loads((ddp_run / f"rank{r}" / "dpo_first_loss.json").read_text())["loss"]
        assert first == pytest.approx(math.log(2), abs=1e-4), (r, first)
    assert json.loads((ddp_run / "stage3.json").read_text())["step0_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_grad_accum_splits_across_processes_or_names_the_param():
    assert distributed.per_process_grad_accum(8, 2) == 4 and distributed.per_process_grad_accum(8, 8) == 1
    with pytest.raises(ParamsError, match=r"stage1\.grad_accum is 8, not a multiple of the 3"):
        distributed.per_process_grad_accum(8, 3, key="stage1.grad_accum")
    cmd = distributed.launch_command(4, "stages.sft", ["--stage", "stage1"])
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
