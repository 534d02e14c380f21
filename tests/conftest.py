import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def project_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    # The hub is never reachable here; fail fast instead of retrying for minutes.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def copy_project(dest: Path) -> Path:
    """A fresh git+DVC checkout of the working tree (tracked and untracked-not-ignored files) at `dest`.

    Used by the tests that drive the real `dvc` CLI, so they see the code under test, not the last commit.
    """
    import shutil
    import subprocess

    from kospi_ft import params

    # Stage outs that DVC has not listed in a .gitignore yet (a stage run by hand) must not travel as source.
    paths = params.load_paths(ROOT / "params.yaml")
    outs = [paths.market_dir, paths.snapshots_dir, paths.stage1_data, paths.stage1_eval, paths.synthetic,
            paths.eval_set, paths.stage2_data, paths.logs_eval, paths.dpo_pairs, paths.eval_pairs, paths.models_dir]
    # Relative to ROOT, like `git ls-files` (they come back absolute when the tests run from another folder).
    outs = [o.relative_to(ROOT) if o.is_absolute() else o for o in outs]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file() or any(Path(rel).is_relative_to(o) for o in outs):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def dvc(cwd: Path, *args: str, check: bool = True):
    """Run the real dvc CLI of this environment in `cwd`."""
    import subprocess
    import sys

    dvc_bin = Path(sys.executable).with_name("dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{dvc_bin.parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(dvc_bin), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    """The tiny random-init Qwen2 (real tokenizer) the CPU training tests train on, built once per module."""
    from model_fixtures import build_tiny_hf

    return str(build_tiny_hf(tmp_path_factory.mktemp("base"))[0])


@pytest.fixture(scope="module")
def stage2_dir(base_dir, tmp_path_factory) -> Path:
    """A Stage 2 adapter far from the base (random A and B), so reference == base vs == Stage 2 is visible and DPO's
    policy and reference both carry weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kospi_ft.training import backends

    out = tmp_path_factory.mktemp("stage2") / "stage2"
    torch.manual_seed(5)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=8, lora_alpha=16, target_modules=list(backends.TARGET_MODULES), init_lora_weights=False))
    model.save_pretrained(out)
    return out
