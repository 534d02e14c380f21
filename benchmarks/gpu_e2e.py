"""The real preset end to end through the project's own DVC graph, on a GPU machine without hub access.

A copy of the project in WORK gets the real preset (`stages.preset real`) plus the overrides in
benchmarks/gpu_e2e.yaml: a local 7B-shaped random-weight base instead of the hub model, the embedded data
sources (fixtures, simulated market) and small counts, every shape the real one (Stage 1 seq 2048 wrapped,
bs 2 x ga 8; Stage 2 seq 4096; DPO seq 4096, bs 1 x ga 8, lr 5e-6). Each step runs `dvc repro` (or, for the
resume check, the stage's own command) and appends one JSON line to RESULTS:
`stage`, `ok`, `seconds`, `peak_vram_gib` (nvidia-smi, whole GPU), `peak_rss_gib` (the stage's processes),
`disk_gib` (the filesystem's peak use above the start), and tokens/s for the training stages.

    python benchmarks/gpu_e2e.py prepare WORK --model /tmp/m7b
    python benchmarks/gpu_e2e.py repro WORK stage1 [stage2 ...] --results RESULTS
    python benchmarks/gpu_e2e.py resume WORK stage1 --results RESULTS     # SIGKILL after checkpoint 1, rerun
    python benchmarks/gpu_e2e.py eval WORK stage3 --results RESULTS --label cpu --gpu-layers 0 --n-samples 2
    python benchmarks/gpu_e2e.py llama-diag MODEL.gguf --results RESULTS --gpu-layers -1

`llama-diag` loads a GGUF in one fresh process per case, each case one difference between a bare
`Llama(n_gpu_layers=-1)` and what the evaluate stage does (quiet loading, the offload query first, n_ctx 8192, every
core, torch or the stage's imports loaded first, the stage's own backend), and records the exit status (a crash is
a negative signal number), the Python stack faulthandler printed, and the CUDA libraries each process had mapped.

`bash benchmarks/gpu_e2e.sh` runs them in order on the device machine. `--cpu` (prepare) swaps in the hf backend
and the CPU so the same steps run on a machine without a GPU (a check of the plumbing, not of speed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OVERRIDES = ROOT / "benchmarks" / "gpu_e2e.yaml"
COPY_SKIP = {".git", ".venv", ".whl", ".whl2", ".whl3", ".dvc/cache", ".dvc/tmp", "checkpoints", "models",
             "data/market_daily", "data/snapshots", "dvc_plots"}


def _yaml_load(path: Path) -> dict:
    try:
        from ruamel.yaml import YAML

        return YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except ImportError:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# What a refresh of an existing WORK keeps: the outputs' record (dvc.lock) and the metrics the stages wrote there.
KEEP_ON_REFRESH = {"dvc.lock", "metrics"}


def prepare(work: Path, model: str, cpu: bool, fresh: bool = True) -> None:
    """Copy the project (tracked files and fixtures, no outputs) to WORK as a fresh git repo with the preset.

    `fresh=False` on an existing WORK refreshes its code and params in place and keeps what its stages made (the
    outputs, dvc.lock, the metrics), so a later call of the same machine runs the current code on them: DVC reruns
    only the stages whose code changed."""
    from kospi_ft import params, presets

    refresh = work.exists() and not fresh
    if work.exists() and not refresh:
        shutil.rmtree(work)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0") if (ROOT / ".git").exists() else None
    if files is None:  # a working-tree copy without .git (the device machine's)
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    skip = COPY_SKIP | (KEEP_ON_REFRESH if refresh else set())
    for rel in filter(None, files):
        if any(rel == s or rel.startswith(s + "/") for s in skip) or not (ROOT / rel).is_file():
            continue
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    pfile = work / "params.yaml"
    presets.write(pfile, "real")
    overrides = _leaves(_yaml_load(OVERRIDES)["params"])
    overrides["model.name"] = model
    if cpu:
        overrides |= _leaves(_yaml_load(OVERRIDES)["cpu"])
    for key, value in overrides.items():
        params.update(pfile, key, value)
    params.read_raw(pfile)  # validates
    if refresh:
        if (work / ".git").exists():
            git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
            subprocess.run([*git, "add", "-A"], cwd=work, check=True)
            subprocess.run([*git, "commit", "-qm", "e2e refresh", "--allow-empty"], cwd=work, check=True)
    elif shutil.which("git"):
        git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        subprocess.run([*git, "add", "-A"], cwd=work, check=True)
        subprocess.run([*git, "commit", "-qm", "e2e"], cwd=work, check=True)
    else:  # DVC without git: the pipeline runs the same, only experiments need git
        subprocess.run([sys.executable, "-m", "dvc", "config", "core.no_scm", "true"], cwd=work, check=True)
    print(json.dumps({"stage": "prepare", "ok": True, "work": str(work), "refreshed": refresh,
                      "overrides": overrides}), flush=True)


class Watch:
    """Sampled peaks while a command runs: GPU memory (nvidia-smi, the whole card), resident memory of the
    command's process tree, and disk use above the start."""

    def __init__(self, path: Path, pid: int, interval: float = 0.5):
        self.path, self.pid, self.interval = path, pid, interval
        self.disk0 = shutil.disk_usage(path).used
        self.vram = 0.0
        self.rss = 0
        self.disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.disk = max(self.disk, shutil.disk_usage(self.path).used - self.disk0)
            self.rss = max(self.rss, self._tree_rss())
            if shutil.which("nvidia-smi"):
                r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True)
                if r.returncode == 0 and r.stdout.strip():
                    self.vram = max(self.vram, float(r.stdout.split()[0]) / 1024)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _env() -> dict:
    # faulthandler: a stage that crashes (SIGSEGV) leaves its Python stack in the step's log.
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def record(results: Path, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def _train_numbers(work: Path, stage: str) -> dict:
    name = {"stage3": "stage3"}.get(stage, stage)
    f = work / "metrics" / "train" / f"{name}.json"
    if not f.is_file():
        return {}
    m = json.loads(f.read_text())
    keep = ("tokens_per_second", "tokens_seen", "steps", "train_seconds", "peak_memory_gib", "resumed_from",
            "first_loss", "final_loss", "step0_loss", "step0_reward_margin", "final_reward_margin",
            "final_reward_accuracy", "final_rewards_chosen", "final_rewards_rejected", "packing_fill")
    return {k: m[k] for k in keep if k in m}


LOGS = Path(os.environ.get("E2E_LOGS", "/tmp/e2e-logs"))  # one log per step, kept out of the results' folder


def run_step(work: Path, results: Path, label: str, cmd: list[str], extra=None) -> bool:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_file = LOGS / f"{label.replace('@', '_').replace('[', '-').replace(']', '')}.log"
    t0 = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        with Watch(work, proc.pid) as watch:
            proc.wait()
    seconds = time.perf_counter() - t0
    row = {"stage": label, "ok": proc.returncode == 0, "seconds": round(seconds, 1),
           "peak_vram_gib": round(watch.vram, 2), "peak_rss_gib": round(watch.rss / 2**30, 2),
           "disk_gib": round(watch.disk / 2**30, 2), **(extra(work) if extra else {})}
    if proc.returncode != 0:
        row["error_tail"] = log_file.read_text(encoding="utf-8", errors="replace")[-1500:]
    record(results, row)
    return proc.returncode == 0


def repro(work: Path, results: Path, stages: list[str]) -> bool:
    dvc = [sys.executable, "-m", "dvc", "repro", "--single-item"]
    for stage in stages:
        extra = (lambda w, s=stage: _train_numbers(w, s)) if stage in ("stage1", "stage2", "stage3") else None
        if stage.startswith("evaluate@"):
            extra = lambda w, s=stage: _eval_numbers(w / "metrics" / "eval" / f"{s.split('@')[1]}.json")
        if stage.startswith("export@"):
            extra = lambda w, s=stage: _export_numbers(w / "metrics" / "export" / f"{s.split('@')[1]}.json")
        if not run_step(work, results, stage, [*dvc, stage], extra):
            return False
    return True


def _eval_numbers(path: Path) -> dict:
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {"n_samples": m.get("n_samples"), "s_per_sample": m.get("latency", {}).get("mean_s"),
            "gen_tokens_per_s": m.get("throughput", {}).get("gen_tokens_per_s"),
            "completion_tokens_mean": m.get("throughput", {}).get("completion_tokens_mean"),
            "wall_s": m.get("throughput", {}).get("wall_s"),
            "wall_gen_tokens_per_s": m.get("throughput", {}).get("wall_gen_tokens_per_s"),
            "json_valid_rate": m.get("json", {}).get("valid_rate")}


def _export_numbers(path: Path) -> dict:
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {"gguf_bytes": m.get("gguf_bytes"), "file_type": m.get("file_type"),
            "fallback_tensors": m.get("fallback_tensors"), "step_seconds": m.get("seconds")}


def resume(work: Path, results: Path, stage: str) -> bool:
    """Run the stage's command, SIGKILL it once its first checkpoint is complete, then `dvc repro` it."""
    from kospi_ft.training import checkpoints

    cmd = {"stage1": ["-m", "stages.sft", "--stage", "stage1"], "stage2": ["-m", "stages.sft", "--stage", "stage2"],
           "stage3": ["-m", "stages.dpo"]}[stage]
    ckpt_dir = work / "checkpoints" / stage
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{stage}_killed.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed_at = None
    while proc.poll() is None:
        done = [c for c in checkpoints.checkpoints(ckpt_dir) if checkpoints.problem(c) is None]
        if done:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = done[0].name
            break
        time.sleep(0.5)
    proc.wait()
    record(results, {"stage": f"{stage}-killed", "ok": killed_at is not None, "seconds": round(time.perf_counter() - t0, 1),
                     "killed_after": killed_at, "returncode": proc.returncode})
    if killed_at is None:
        return False
    ok = run_step(work, results, f"{stage}-resumed", [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                  lambda w: _train_numbers(w, stage))
    resumed = _train_numbers(work, stage).get("resumed_from")
    record(results, {"stage": f"{stage}-resume-check", "ok": ok and resumed == killed_at, "resumed_from": resumed,
                     "killed_after": killed_at})
    return ok and resumed == killed_at


def evaluate_variant(work: Path, results: Path, model: str, label: str, backend: str, gpu_layers: int | None,
                     n_samples: int, max_new_tokens: int, parallel: int | None = None) -> bool:
    """Free generation only (the likelihood metrics, the guided and the regime pass ran in the DVC stage): one
    backend / build on the same samples."""
    out = LOGS / f"eval-{model}-{label}.json"
    cmd = [sys.executable, "-m", "stages.evaluate", "--name", model, "--backend", backend, "--n-samples",
           str(n_samples), "--max-new-tokens", str(max_new_tokens), "--guided-samples", "0", "--regime-dates", "0",
           "--no-likelihood", "--output", str(out), "--no-progress"]
    if gpu_layers is not None:
        cmd += ["--gpu-layers", str(gpu_layers)]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    return run_step(work, results, f"evaluate@{model}[{label}]", cmd, lambda w: _eval_numbers(out))


# ---- llama.cpp load diagnosis -----------------------------------------------------------------------------------

def _load_torch() -> None:
    import torch  # noqa: F401


def _init_torch_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")


def _load_stage() -> None:
    import stages.evaluate  # noqa: F401  (pyarrow and the data modules, as the stage's process holds them)


def _load_stage_and_torch_cuda() -> None:
    _load_stage()
    _init_torch_cuda()


# case -> (what the process loads before llama.cpp, keyword arguments of Llama, query llama_supports_gpu_offload
# first). stage_backend: the evaluate stage's process (its imports, torch's CUDA context) with the backend's own
# llama.cpp process for the model.
LLAMA_CASES: dict[str, tuple] = {
    "bare": (None, {}, False),
    "quiet": (None, {"verbose": False}, False),
    "offload_query_first": (None, {}, True),
    "n_ctx_8192": (None, {"n_ctx": 8192}, False),
    "threads_all": (None, {"n_threads": os.cpu_count(), "n_threads_batch": os.cpu_count()}, False),
    "torch_imported": (_load_torch, {}, False),
    "torch_cuda_initialised": (_init_torch_cuda, {}, False),
    "stage_imports": (_load_stage, {}, False),
    "stage_backend": (_load_stage_and_torch_cuda, {}, False),
}


def _cuda_libraries() -> list[str]:
    """The CUDA runtime/BLAS/driver libraries this process has mapped (path, once each)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    keys = ("libcudart", "libcublas", "libcuda.so", "libggml-cuda", "libnvrtc", "libnvJitLink")
    return sorted({line.split()[-1] for line in lines if any(k in line.split()[-1] for k in keys)})


def llama_case(name: str, gguf: Path, gpu_layers: int, max_new_tokens: int = 128) -> None:
    """One case, in this process: load the GGUF and answer one short chat; print the libraries mapped."""
    load_first, kwargs, query = LLAMA_CASES[name]
    if load_first:
        load_first()
    messages = [{"role": "system", "content": "You are a KOSPI quant analyst."},
                {"role": "user", "content": "Classify the regime: KOSPI -2.3%, breadth 25%."}]
    speed = {}
    if name == "stage_backend":
        from kospi_ft.evaluation.backends import LlamaCppBackend
        from kospi_ft.prompts import QUANT_SYSTEM_PROMPT

        backend = LlamaCppBackend(gguf, n_ctx=8192, n_threads=0, gpu_layers=gpu_layers, require_gpu=gpu_layers != 0)
        messages[0]["content"] = QUANT_SYSTEM_PROMPT
        gen = backend.generate(messages, max_new_tokens)
        text = gen.text
        # Prompt processing: the ~1.4k-token system prompt, decoded alone as the stage does once per model.
        speed = {"prompt_tokens": backend.last["prefix_tokens"],
                 "prompt_tokens_per_s": round(backend.last["prefix_tokens"] / backend.last["prefix_s"], 1),
                 "gen_tokens": gen.completion_tokens, "gen_seconds": round(gen.latency_s, 3),
                 "gen_tokens_per_s": round(gen.completion_tokens / (gen.latency_s - backend.last["prefix_s"]), 1),
                 "llama_process_preloaded": backend.worker["preloaded"]}
        backend.close()
    else:
        import llama_cpp

        print(json.dumps({"case": name, "phase": "imported", "libraries": _cuda_libraries(),
                          "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()) if query else None}),
              flush=True)
        llm = llama_cpp.Llama(model_path=str(gguf), n_gpu_layers=gpu_layers, **{"n_ctx": 2048, **kwargs})
        text = llm.create_chat_completion(messages=messages, max_tokens=8)["choices"][0]["message"]["content"]
        llm.close()
    print(json.dumps({"case": name, "phase": "generated", "libraries": _cuda_libraries(), "text": text, **speed}),
          flush=True)


def llama_diag(gguf: Path, results: Path, gpu_layers: int, cases: list[str], timeout: float) -> bool:
    """Every case in its own process; one result row per case."""
    ok = True
    for name in cases:
        cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "llama-case", name, str(gguf),
               "--gpu-layers", str(gpu_layers)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), "PYTHONPATH": os.pathsep.join(
                filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}, capture_output=True, text=True,
                timeout=timeout)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = None, exc.stdout or "", exc.stderr or ""
            out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x for x in (out, err))
        rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"case"')]
        last = rows[-1] if rows else {}
        row = {"stage": f"llama-diag[{name}]", "ok": rc == 0, "returncode": rc, "gpu_layers": gpu_layers,
               "seconds": round(time.perf_counter() - t0, 1), "libraries": last.get("libraries"),
               "gpu_offload": rows[0].get("gpu_offload") if rows else None,
               **{k: v for k, v in last.items() if k.startswith(("prompt_", "gen_", "llama_process"))}}
        if rc != 0:
            row["stderr_tail"] = err[-2500:]
        record(results, row)
        ok = ok and rc == 0
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("work", type=Path)
    p.add_argument("--model", required=True, help="the local base model dir (a 7B-shaped random model)")
    p.add_argument("--cpu", action="store_true", help="hf backend on the CPU: check the plumbing without a GPU")
    p.add_argument("--refresh", action="store_true", help="an existing WORK: refresh its code and params in place, "
                                                          "keeping its outputs, dvc.lock and metrics")
    for name in ("repro", "resume", "eval"):
        s = sub.add_parser(name)
        s.add_argument("work", type=Path)
        s.add_argument("stages", nargs="+")
        s.add_argument("--results", type=Path, required=True)
    e = sub.choices["eval"]
    e.add_argument("--label", required=True)
    e.add_argument("--backend", default="llamacpp")
    e.add_argument("--gpu-layers", type=int)
    e.add_argument("--n-samples", type=int, default=2)
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--parallel", type=int, help="llama.cpp replies decoded at once (default: the params')")
    d = sub.add_parser("llama-diag", help="load a GGUF once per case, each in a fresh process")
    d.add_argument("gguf", type=Path)
    d.add_argument("--results", type=Path, required=True)
    d.add_argument("--gpu-layers", type=int, default=-1)
    d.add_argument("--cases", nargs="+", choices=list(LLAMA_CASES), default=list(LLAMA_CASES))
    d.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    c = sub.add_parser("llama-case", help="one llama-diag case in this process")
    c.add_argument("case", choices=list(LLAMA_CASES))
    c.add_argument("gguf", type=Path)
    c.add_argument("--gpu-layers", type=int, default=-1)
    c.add_argument("--max-new-tokens", type=int, default=128, help="stage_backend: tokens generated for the speed")
    a = ap.parse_args()
    if a.cmd == "llama-case":
        llama_case(a.case, a.gguf, a.gpu_layers, a.max_new_tokens)
        return
    if a.cmd == "llama-diag":
        a.results.parent.mkdir(parents=True, exist_ok=True)
        sys.exit(0 if llama_diag(a.gguf, a.results, a.gpu_layers, a.cases, a.timeout) else 1)
    if a.cmd == "prepare":
        prepare(a.work, a.model, a.cpu, fresh=not a.refresh)
        return
    a.results.parent.mkdir(parents=True, exist_ok=True)
    if a.cmd == "repro":
        ok = repro(a.work, a.results, a.stages)
    elif a.cmd == "resume":
        ok = all(resume(a.work, a.results, s) for s in a.stages)
    else:
        ok = all(evaluate_variant(a.work, a.results, s, a.label, a.backend, a.gpu_layers, a.n_samples,
                                  a.max_new_tokens, a.parallel) for s in a.stages)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
