"""Multi-process data-parallel training (DDP) through torch's own launcher, `torchrun`.

`train.num_processes` > 1 (or `--num-processes N` on a training stage) makes the stage start itself again under
`python -m torch.distributed.run --standalone --nproc_per_node N`, one process per GPU (gloo processes on a CPU
machine with `model.allow_cpu`). The launcher passes its environment on untouched, so the machine's NCCL settings
(NVLink multicast off, where a workplace sets that) hold in every process. The transformers Trainer then runs DDP:
every rank reads the same data and its DistributedSampler shards it; gradients are averaged across ranks.

The effective batch stays what params.yaml says (per-device batch x grad_accum): each of N processes accumulates
grad_accum / N micro-batches, so the learning rate needs no rescaling and 1 and N GPUs train the same schedule.
grad_accum must therefore be a multiple of N (the real preset's Stage 1: 8, so 1, 2, 4 or 8 GPUs).

Only rank 0 writes: outs, metrics, dvclive curves, checkpoints and their fingerprint (the Trainer saves model and
optimizer state on rank 0; every rank saves its own RNG state into the same checkpoint).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from pydantic import Field

from ..errors import ParamsError
from ..params import Section

log = logging.getLogger(__name__)


class LaunchParams(Section):
    """params.yaml `train`: how many processes each training stage runs."""

    num_processes: int = Field(1, ge=1)  # DDP processes (GPUs); 1 = a plain single process


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Whether this process was started by the launcher (torchrun sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and world_size() > 1


def is_main() -> bool:
    return rank() == 0


def launch_command(num_processes: int, module: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", module, *argv]


def check_devices(num_processes: int, allow_cpu: bool) -> None:
    """One process per GPU; processes on the CPU only when CPU training is allowed."""
    import torch

    if torch.cuda.is_available():
        if num_processes > torch.cuda.device_count():
            raise ParamsError(f"params.yaml: train.num_processes is {num_processes}, but "
                              f"{torch.cuda.device_count()} GPU(s) are visible (one process per GPU)")
    elif not allow_cpu:
        raise ParamsError(f"params.yaml: train.num_processes is {num_processes} and no GPU is visible; DDP on the "
                          "CPU needs model.allow_cpu: true")


def relaunch(num_processes: int, module: str, argv: list[str]) -> None:
    """Run this stage again as `num_processes` DDP processes and exit with the launcher's status."""
    cmd = launch_command(num_processes, module, argv)
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    sys.exit(subprocess.run(cmd, env=os.environ.copy()).returncode)


def per_process_grad_accum(grad_accum: int, processes: int | None = None, key: str = "grad_accum") -> int:
    """grad_accum / world size: the effective batch stays per-device batch x grad_accum (see module doc)."""
    processes = world_size() if processes is None else processes
    if grad_accum % processes:
        raise ParamsError(f"params.yaml: {key} is {grad_accum}, not a multiple of the {processes} training "
                          f"processes; the effective batch (batch_size x grad_accum) is split across them")
    return grad_accum // processes


def init_process_group() -> None:
    """Join the launcher's process group before the Trainer exists (rank 0 prepares the checkpoint dir while
    the others wait at `barrier`); the Trainer reuses the group."""
    if not launched():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group(backend="gloo")


def barrier() -> None:
    if launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
