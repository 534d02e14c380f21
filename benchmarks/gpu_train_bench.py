"""GPU benchmark of the pipeline's own training code against raw unsloth (the anchor), plus GPU-side checks.

Runs on a CUDA machine, on a Qwen2.5-7B-shaped random-weight model (throughput and memory do not depend on the
weight values). The baseline is anchor_bench.py (a hand loop: FastLanguageModel / HF+PEFT, AdamW-8bit, random ids)
measured in the same call on the same card; this script measures `kospi_ft.training.sft` end to end (TRL
SFTTrainer, packing, assistant-only loss, the project's backend setup) and prints JSON lines:

  python benchmarks/gpu_train_bench.py sft --backend unsloth --model /tmp/m7b --seq 2048 --bs 2 --steps 10 \
      --adapter-out /tmp/s2
  python benchmarks/gpu_train_bench.py packing --backend unsloth --model /tmp/m7b
  python benchmarks/gpu_train_bench.py dpo --backend unsloth --model /tmp/m7b --adapter /tmp/s2 --steps 3
  python benchmarks/gpu_train_bench.py ratio FILE.jsonl        # pipeline / anchor tokens/s and memory
  python benchmarks/gpu_train_bench.py auto --stage stage2 --backend unsloth --model /tmp/m7b --cap 24 \
      --data data/stage2/train.jsonl                            # train.layout auto under a 24 GiB cap
  python benchmarks/gpu_train_bench.py auto --stage stage2 ... --cap 24 --micro-batch 1 --checkpointing off \
      --variant single-doc-rows --profile                      # a pinned layout, a diagnostic variant, profiled
  python benchmarks/gpu_train_bench.py auto-rows FILE.jsonl    # auto runs vs their anchors

Conversations are generated with lengths spread so that best-fit packing has work to do; tokens/s counts the
real (non-pad) tokens of each packed batch over the median steady-state step time, like the anchor.

Every mode but `attn` also runs on a machine without a GPU (`--backend hf` on a tiny model, fp32): the test suite
runs them so that a change to the training code or its params breaks this script in CI, not on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("삼성전자 코스피 반도체 외국인 순매수 변동성 추세 이동평균 밸류에이션 exposure signal regime momentum "
         "volatility breadth stop-loss take-profit leverage sector earnings dividend 시가총액 거래량 PER PBR").split()


def conversations(n: int, seed: int) -> list[dict]:
    """Chat records of ~100-1500 tokens: prompt-heavy and answer-heavy ones, like the finance + strategy sets."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 600)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400)))
        out.append({"messages": [{"role": "system", "content": "You are a KOSPI quant analyst."},
                                 {"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return out


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 400)))
        out.append({"prompt": [{"role": "user", "content": user}],
                    "chosen": [{"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(120))}],
                    "rejected": [{"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(90))}]})
    return out


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    """Wait for the GPU's queued work (a step's wall time); nothing to wait for on the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib(kind: str = "allocated") -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(getattr(torch.cuda, f"max_memory_{kind}")() / 2**30, 2)


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def step_clock():
    """A TrainerCallback recording each optimizer step's wall time, synchronised with the GPU at both ends."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []  # non-pad tokens of each step (the Trainer's num_input_tokens_seen delta)
            self._t = 0.0
            self._seen = 0

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.times.append(time.perf_counter() - self._t)
            self.tokens.append(state.num_input_tokens_seen - self._seen)
            self._seen = state.num_input_tokens_seen

    return StepClock()


def record_batch_shapes(trainer) -> list[tuple]:
    """Record each micro-batch's input_ids shape (+ packed segment count) at the collator (unsloth wraps torch_call
    too, so this wraps that rather than replacing the collator object)."""
    shapes: list[tuple] = []
    collator = trainer.data_collator
    collate = collator.torch_call

    def recording(examples):
        batch = collate(examples)
        segments = batch.get("packed_seq_lengths")
        shapes.append((*batch["input_ids"].shape, 0 if segments is None else int(segments.numel())))
        return batch

    collator.torch_call = recording
    return shapes


def run_paths(tmp: Path, name: str):
    from kospi_ft.training.common import RunPaths

    return RunPaths(output_dir=tmp / name, checkpoint_dir=tmp / f"ckpt-{name}", metrics_file=tmp / f"{name}.json",
                    live_dir=None)  # dvclive is not installed on the GPU machine; curves do not affect speed


def bench_sft(args) -> dict:
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    import torch
    from kospi_ft.training.layouts import row_lengths
    from kospi_ft.training.sft import SFTParams, build_sft_trainer, count_label_tokens, load_conversations

    # The real preset's Stage 1 (or --section stage2) section, shortened to a few steps.
    overrides = {"epochs": 1, "max_steps": args.steps, "save_steps": 10_000, "logging_steps": 1}
    for flag, key in (("seq", "max_seq_length"), ("bs", "batch_size"), ("grad_accum", "grad_accum"),
                      ("packing", "packing_strategy")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    # The section as it runs, less what only the stage's own command reads (Stage 2's skip_stage1); no held-out
    # split is passed, so the measurement has no evaluation in it.
    section = real_section(args.section, overrides)
    params = SFTParams.model_validate({k: v for k, v in section.items() if k in SFTParams.model_fields})
    tmp = Path(tempfile.mkdtemp())
    clock = step_clock()
    t0 = time.perf_counter()
    reset_peak()
    trainer = build_sft_trainer(params, model_name=args.model, backend=backend, load_in_4bit=True,
                                data=load_conversations(Path(args.data))[:args.records] if args.data
                                else conversations(args.records, 0), init_adapter=None,
                                paths=run_paths(tmp, "sft"), callbacks=[clock])
    load_s = time.perf_counter() - t0
    # Real tokens in each batch the trainer will draw (bfd flattens a batch into one padding-free row; wrapped pads
    # rows to the longest); fill = tokens per step over the bs x ga x seq capacity.
    lengths = row_lengths(trainer.train_dataset).tolist()
    labels, total = count_label_tokens(trainer.train_dataset)
    if args.no_token_count:
        # Variant: without the Trainer's per-micro-batch token count (one device sync each); tokens from the collator.
        trainer.args.include_num_input_tokens_seen = "no"
    shapes = record_batch_shapes(trainer)
    loader = trainer.get_train_dataloader()
    batch_tokens, batch_pad = [], []
    for i, batch in enumerate(loader):
        if i >= args.steps * params.grad_accum:
            break
        ids = batch["input_ids"]
        pad = int((batch["attention_mask"] == 0).sum()) if "attention_mask" in batch else 0
        batch_tokens.append(int(ids.numel()) - pad)
        batch_pad.append(pad)
    counted = len(shapes)  # the count above drew (and collated) its own batches
    result = trainer.train()
    train_shapes = shapes[counted:]
    warm = min(2, len(clock.times) - 1)  # steps left out as warm-up (compilation); all but one on a short run
    if not any(clock.tokens):
        ga = params.grad_accum
        clock.tokens = [sum(b * n for b, n, _ in train_shapes[i * ga:(i + 1) * ga]) for i in range(len(clock.times))]
    # Steady state: the first steps compile (unsloth compiles each decoder block; new row lengths recompile).
    def rate(first: int) -> tuple[float, float]:
        t, n = clock.times[first:], clock.tokens[first:]
        return sum(n) / sum(t), statistics.median(t)

    tok_s, med = rate(warm)
    tok_s_tail, med_tail = rate(len(clock.times) // 2)
    # The anchor's statistic (tokens of a step over the median steady step time), per step here since a step's
    # token count can vary with packing.
    tok_s_median = statistics.median(n / t for n, t in zip(clock.tokens[warm:], clock.times[warm:]))
    tokens_per_step = statistics.mean(clock.tokens[warm:])
    out = {
        "bench": "pipeline_sft", "section": args.section, "backend": backend, "packing": params.packing_strategy,
        "variant": "no_token_count" if args.no_token_count else None,
        "trl": __import__("trl").__version__, "seq": params.max_seq_length, "bs": params.batch_size,
        "grad_accum": params.grad_accum, "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled(),
        "effective_batch": params.batch_size * params.grad_accum,
        "load_s": round(load_s, 1), "step_s_median": round(med, 3),
        "tokens_per_step": round(tokens_per_step, 1),
        "tokens_per_s": round(tok_s), "tokens_per_s_second_half": round(tok_s_tail),
        "tokens_per_s_median_step": round(tok_s_median),
        "step_s_median_second_half": round(med_tail, 3),
        "non_pad_fraction": round(sum(batch_tokens) / (sum(batch_tokens) + sum(batch_pad)), 4),
        "fill_of_capacity": round(
            tokens_per_step / (params.batch_size * params.grad_accum * params.max_seq_length), 4),
        "packed_rows": len(lengths), "mean_row_tokens": round(statistics.mean(lengths), 1),
        "rows_shorter_than_seq": sum(n < params.max_seq_length for n in lengths), "min_row_tokens": min(lengths),
        "micro_batches": len(train_shapes), "distinct_batch_shapes": len(set(train_shapes)),
        "batch_shapes_first": train_shapes[:12],
        "label_token_fraction": round(labels / total, 4),
        "peak_alloc_GiB": peak_gib("allocated"), "peak_reserved_GiB": peak_gib("reserved"),
        "loss_first": trainer.state.log_history[0].get("loss"), "train_loss": round(result.training_loss, 4),
        "step_times": [round(x, 3) for x in clock.times], "step_tokens": clock.tokens,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h], "gpu": device_name(),
    }
    if args.adapter_out:
        from kospi_ft.training.common import save_adapter

        save_adapter(trainer.model, trainer.processing_class, Path(args.adapter_out), {"bench": "sft"})
    return out


def real_section(name: str, overrides: dict) -> dict:
    """The real preset's `name` section (params.yaml), with `overrides`."""
    import yaml  # PyYAML (a transformers dependency): the GPU image has no ruamel

    from kospi_ft import presets

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    return {**presets.applied(raw, "real")[name], **overrides}


def bench_auto(args) -> dict:
    """One training stage of the real preset under train.layout (`--layout auto|recipe`) and a memory cap
    (`--cap` GiB, train.memory_limit_gib): the layout it ran, tokens/s over the steady steps, peak memory, losses.
    Stage 1 and 2 count the non-pad tokens of each step; DPO the prompt + chosen and prompt + rejected tokens of its
    pairs."""
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    from kospi_ft.training.layouts import TrainSetup

    setup = TrainSetup(layout=args.layout, memory_limit_gib=args.cap)
    overrides = {"epochs": 1, "max_steps": args.steps, "save_steps": 10_000, "logging_steps": 1}
    for flag, key in (("seq", "max_seq_length"), ("bs", "batch_size"), ("grad_accum", "grad_accum"),
                      ("micro_batch", "micro_batch"), ("checkpointing", "checkpointing")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    tmp = Path(tempfile.mkdtemp())
    clock = step_clock()
    reset_peak()
    t0 = time.perf_counter()
    if args.stage == "dpo":
        from kospi_ft.training import dpo

        section = real_section("dpo", overrides)
        params = dpo.DPOParams.model_validate({k: v for k, v in section.items() if k in dpo.DPOParams.model_fields})
        data = dpo.load_pairs(Path(args.data))[:args.records] if args.data else pairs(args.records, 1)
        trainer = dpo.build_fitted(params, setup=setup, model_name=args.model, backend=backend, load_in_4bit=True,
                                   data=data, stage2_adapter=Path(args.adapter), paths=run_paths(tmp, "dpo"),
                                   callbacks=[clock])
        from kospi_ft.training.layouts import dpo_lengths

        per_pair = [2 * p + c + r for p, c, r in zip(*dpo_lengths(trainer.train_dataset))]
    else:
        from kospi_ft.training import sft

        section = real_section(args.stage, overrides)
        params = sft.SFTParams.model_validate({k: v for k, v in section.items() if k in sft.SFTParams.model_fields})
        data = sft.load_conversations(Path(args.data))[:args.records] if args.data else conversations(args.records, 0)
        trainer = sft.build_fitted(params, stage=args.stage, setup=setup, model_name=args.model, backend=backend,
                                   load_in_4bit=True, data=data, init_adapter=None, paths=run_paths(tmp, "sft"),
                                   callbacks=[clock])
        per_pair = None
    load_s = time.perf_counter() - t0
    apply_variant(trainer, args.variant)
    items = record_num_items(trainer)
    profiler = step_profiler(3, 4) if args.profile else None
    if profiler is not None:
        trainer.add_callback(profiler)
    reset_peak()  # the training steps' peak, not the probe's
    result = trainer.train()
    layout = trainer.layout
    rows = layout.micro_batch * layout.grad_accum
    if per_pair is not None:  # DPO: the Trainer counts no input_ids; the pairs of each step, in sampler order
        clock.tokens = [rows * statistics.mean(per_pair)] * len(clock.times)
    warm = min(2, len(clock.times) - 1)
    if profiler is not None and len(clock.times) > 4:
        warm = 4  # the profiled steps (3-4) are left out too: tracing slows them
    tok_s = sum(clock.tokens[warm:]) / sum(clock.times[warm:])
    out = {"bench": "auto_layout", "stage": args.stage, "backend": backend, "memory_cap_gib": args.cap,
           "layout_mode": args.layout, "layout": layout.as_dict(), "seq": params.max_seq_length,
           "effective_batch": params.batch_size * params.grad_accum, "load_s": round(load_s, 1),
           "tokens_per_s": round(tok_s), "step_s_median": round(statistics.median(clock.times[warm:]), 3),
           "peak_gib": peak_gib("allocated"), "peak_reserved_gib": peak_gib("reserved"),
           "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
           "train_loss": round(result.training_loss, 4), "step_times": [round(x, 3) for x in clock.times],
           "variant": args.variant,
           "num_items_in_batch": [None if n is None else int(n) for n in items], "dynamo": dynamo_counters(),
           "gpu": device_name()}
    if profiler is not None:
        out["profile"] = profiler.summary()
    if args.adapter_out:
        from kospi_ft.training.common import save_adapter

        save_adapter(trainer.model, trainer.processing_class, Path(args.adapter_out), {"bench": "auto"})
    return out


def apply_variant(trainer, variant: str | None) -> None:
    """Diagnostic variants of a built trainer: `single-doc-rows` collates a micro-batch of one single-document packed
    row as a plain row (no padding-free keys), the layout of the raw loop's batches."""
    if variant in (None, "none"):
        return
    if variant == "single-doc-rows":
        import dataclasses

        packed = trainer.data_collator
        plain = dataclasses.replace(packed, padding_free=False, return_position_ids=False)

        def collate(examples):
            if len(examples) == 1 and len(examples[0].get("seq_lengths") or [0]) == 1:
                return plain(examples)
            return packed(examples)

        trainer.data_collator = collate
    else:
        raise SystemExit(f"unknown --variant {variant}")


def record_num_items(trainer) -> list:
    """The num_items_in_batch the Trainer hands compute_loss on each training micro-batch (None: each micro-batch's
    loss is its own mean, and a layout change would reweight the tokens)."""
    seen: list = []
    compute = trainer.compute_loss

    def recording(model, inputs, *a, **kw):
        if model.training and len(seen) < 4:
            seen.append(kw.get("num_items_in_batch"))  # read after training: no device sync here
        return compute(model, inputs, *a, **kw)

    trainer.compute_loss = recording
    return seen


def dynamo_counters() -> dict:
    """torch.compile's frame and recompile counts so far (a new row length can recompile a compiled region)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {k: dict(counters[k]) for k in ("frames", "stats", "recompiles") if k in counters}


def step_profiler(first: int, last: int):
    """A TrainerCallback running torch.profiler over optimizer steps first..last (1-based); `summary()`: wall time,
    GPU kernel time and the top ops."""
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.prof = torch.profiler.profile(activities=list(torch.profiler.supported_activities()))
            self.wall = 0.0
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 == first:
                sync()
                self.prof.__enter__()
                self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == last:
                sync()
                self.wall = time.perf_counter() - self._t
                self.prof.__exit__(None, None, None)

        def summary(self) -> dict:
            table = self.prof.key_averages()
            kernel_us = sum(e.self_device_time_total for e in table if e.device_type.name == "CUDA")

            def top(key: str, n: int = 12) -> list:
                rows = sorted(table, key=lambda e: getattr(e, key), reverse=True)[:n]
                return [[e.key[:70], round(getattr(e, key) / 1e3, 1), e.count] for e in rows]

            return {"steps": [first, last], "wall_s": round(self.wall, 3),
                    "gpu_kernel_s": round(kernel_us / 1e6, 3),
                    "gpu_busy": round(kernel_us / 1e6 / self.wall, 3) if self.wall else None,
                    "top_self_cpu_ms": top("self_cpu_time_total"),
                    "top_self_device_ms": top("self_device_time_total")}

    return StepProfiler()


def auto_rows(args) -> None:
    """benchmarks/results/h200-7b-auto-layout.jsonl rows from a file of `auto` runs and raw unsloth anchors: each
    stage x cap against its anchor (Stage 1/2: the raw unsloth loop at micro-batch 2 with its checkpointing at the
    stage's seq; DPO: the pipeline's own DPO under the recipe, uncapped)."""
    rows = [json.loads(line) for line in open(args.file) if line.startswith("{")]
    anchors = {r["seq"]: r for r in rows if "step_times" in r and r.get("bench") is None}
    recipe = {r["stage"]: r for r in rows if r.get("bench") == "auto_layout" and r["layout_mode"] == "recipe"
              and r["memory_cap_gib"] is None}
    for r in rows:
        if r.get("bench") != "auto_layout" or r["layout_mode"] != "auto":
            continue
        anchor = recipe.get("dpo") if r["stage"] == "dpo" else anchors.get(r["seq"])
        if anchor is None:
            continue
        a = anchor["tokens_per_s"]
        print(json.dumps({"stage": r["stage"], "memory_cap_gib": r["memory_cap_gib"], "layout": r["layout"],
                          "tokens_per_s": r["tokens_per_s"], "anchor_tokens_per_s": a,
                          "anchor": "pipeline dpo, recipe" if r["stage"] == "dpo" else "raw unsloth, bs 2, unsloth gc",
                          "ratio": round(r["tokens_per_s"] / a, 3), "peak_gib": r["peak_gib"],
                          "pipeline_recipe_tokens_per_s": (recipe.get(r["stage"]) or {}).get("tokens_per_s"),
                          "gpu": r.get("gpu")}))


def bench_packing(args) -> dict:
    """Do packed documents attend across their boundary? Logits of document B alone vs packed after document A."""
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    import torch

    model, tok = backends.load_base(args.model, backend, 2048, True)
    model = backends.attach_lora(model, backends.LoraParams(), backend, 0)
    model.eval()
    dev = device()
    a = tok(" ".join(WORDS * 6), return_tensors="pt").input_ids[0][:300].to(dev)
    b = tok(" ".join(reversed(WORDS * 5)), return_tensors="pt").input_ids[0][:200].to(dev)
    with torch.no_grad():
        alone = model(input_ids=b[None], position_ids=torch.arange(len(b), device=dev)[None]).logits[0].float()
        ids = torch.cat([a, b])[None]
        pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))]).to(dev)[None]
        packed = model(input_ids=ids, position_ids=pos).logits[0, len(a):].float()
        # The same packed row with one continuous position range: attention then does cross the boundary.
        straight = torch.arange(ids.shape[1], device=dev)[None]
        crossed = model(input_ids=ids, position_ids=straight).logits[0, len(a):].float()
    return {"bench": "packing", "backend": backend,
            "max_abs_diff_packed_vs_alone": float((packed - alone).abs().max()),
            "max_abs_diff_crossed_vs_alone": float((crossed - alone).abs().max()),
            "logit_scale": float(alone.abs().max())}


def bench_dpo(args) -> dict:
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    import torch
    from kospi_ft.training.dpo import LN2, DPOParams, train_dpo

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs(32, 1)))
    params = DPOParams(epochs=1, max_steps=args.steps, lr=5e-7, batch_size=1, grad_accum=2, max_seq_length=1024,
                       save_steps=10_000, beta=0.1)
    reset_peak()
    metrics = train_dpo(params, model_name=args.model, backend=backend, load_in_4bit=True, data_path=data,
                        stage2_adapter=Path(args.adapter), paths=run_paths(tmp, "dpo"))
    saved = sorted(p.name for p in (tmp / "dpo").iterdir())
    return {"bench": "pipeline_dpo", "backend": backend, "trl": __import__("trl").__version__,
            "ln2": LN2, "step0_loss": metrics["step0_loss"], "step0_reward_margin": metrics["step0_reward_margin"],
            "step0_ok": abs(metrics["step0_loss"] - LN2) < 1e-3, "final_loss": metrics["final_loss"],
            "peak_alloc_GiB": peak_gib(), "saved_files": saved, "gpu": device_name()}


def bench_layout(args) -> dict:
    """One micro-batch of 4,096 tokens through the pipeline's model + AdamW-8bit, laid out three ways: the anchor's
    2 x 2048 rows, unsloth's padding-free packed row (1 x 4096, two segments), and that with the loss on 39% of the
    tokens (SFT's assistant-only labels). Median seconds of fwd+bwd+step; tells where the pipeline's time goes."""
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    import torch

    seq = args.seq or 2048
    dev = device()
    model, _ = backends.load_base(args.model, backend, seq, True)
    model = backends.attach_lora(model, backends.LoraParams(), backend, 0)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:  # the anchor's optimizer; the CPU stack does not install bitsandbytes
        import bitsandbytes as bnb

        opt, optimizer = bnb.optim.AdamW8bit(trainable, lr=2e-4), "adamw_8bit"
    except ImportError:
        opt, optimizer = torch.optim.AdamW(trainable, lr=2e-4), "adamw_torch"
    vocab = model.config.vocab_size
    gen = torch.Generator(device=dev).manual_seed(0)

    def batch(layout: str) -> dict:
        ids = torch.randint(0, vocab - 1, (2, seq), device=dev, generator=gen)
        if layout == "rows":
            return {"input_ids": ids, "labels": ids}
        labels = ids.clone()
        labels[:, 0] = -100
        if layout == "packed_masked":
            labels[:, : int(seq * 0.61)] = -100
        pos = torch.arange(seq, device=dev).repeat(2)
        return {"input_ids": ids.reshape(1, -1), "labels": labels.reshape(1, -1), "position_ids": pos[None],
                "packed_seq_lengths": torch.tensor([seq, seq], dtype=torch.int32, device=dev)}

    out = {"bench": "layout", "backend": backend, "optimizer": optimizer}
    for name, layout in (("rows", "rows"), ("packed", "packed"), ("packed_masked", "packed_masked"),
                         ("rows_again", "rows")):
        times = []
        for i in range(3 + args.steps):
            b = batch(layout)
            sync()
            t = time.perf_counter()
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t)
        out[f"{name}_s_median"] = round(statistics.median(times), 4)
        out[f"{name}_tokens_per_s"] = round(2 * seq / statistics.median(times))
    return out


def bench_profile(args) -> dict:
    """torch.profiler over two steady optimizer steps of the pipeline's Stage 1 trainer: top ops by CPU and GPU."""
    from kospi_ft.training import backends

    backend = backends.prepare_backend(args.backend)
    import torch
    from transformers import TrainerCallback

    from kospi_ft.training.sft import SFTParams, build_sft_trainer

    class Profile(TrainerCallback):
        def __init__(self):
            self.prof = torch.profiler.profile(activities=list(torch.profiler.supported_activities()))

        def on_step_begin(self, args_, state, control, **kw):
            if state.global_step == 3:
                self.prof.__enter__()

        def on_step_end(self, args_, state, control, **kw):
            if state.global_step == 5:
                sync()
                self.prof.__exit__(None, None, None)

    params = SFTParams(epochs=1, max_steps=6, lr=2e-4, batch_size=args.bs or 2, grad_accum=args.grad_accum or 8,
                       max_seq_length=args.seq or 2048, save_steps=10_000, packing_strategy="wrapped")
    prof = Profile()
    trainer = build_sft_trainer(params, model_name=args.model, backend=backend, load_in_4bit=True,
                                data=conversations(args.records, 0), init_adapter=None,
                                paths=run_paths(Path(tempfile.mkdtemp()), "prof"), callbacks=[prof])
    trainer.train()
    table = prof.prof.key_averages()
    for key in ("self_cpu_time_total", "self_device_time_total"):
        print(table.table(sort_by=key, row_limit=22, max_name_column_width=60), flush=True)
    events = prof.prof.events()
    return {"bench": "profile", "backend": backend, "events": len(events)}


def attention_info() -> dict:
    """The packed-attention route on this machine: flash-attn / xformers / torch varlen, and SDPA's kernel choice."""
    import unsloth  # noqa: F401  (patches first)
    import torch
    from unsloth.utils import attention_dispatch as ad

    q = torch.empty(1, 28, 512, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(1, 4, 512, 128, device="cuda", dtype=torch.bfloat16)
    choice = {}
    for gqa in (False, True):
        kk = k if gqa else q
        try:
            choice[f"gqa={gqa}"] = int(torch._fused_sdp_choice(q, kk, kk, is_causal=True, enable_gqa=gqa))
        except Exception as e:  # noqa: BLE001
            choice[f"gqa={gqa}"] = repr(e)[:120]
    return {"bench": "attn", "torch": torch.__version__, "flash_attn": ad.HAS_FLASH_ATTENTION,
            "xformers": ad.HAS_XFORMERS, "torch_varlen": ad._TORCH_VARLEN_ATTN is not None,
            "flash_sdp_available": torch.backends.cuda.is_flash_attention_available(),
            "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled(),
            "sdp_choice (0 math,1 flash,2 efficient,3 cudnn)": choice,
            "packed_segments": ad._SDPA_PACKED_SEGMENTS, "backend_for_packed": ad.select_attention_backend(True)}


def ratio(args) -> None:
    """Pipeline / raw unsloth tokens/s, each pipeline run against the anchor of its own sequence length."""
    rows = [json.loads(line) for line in open(args.file) if line.startswith("{")]
    anchors = {(r["backend"], r["seq"]): r for r in rows if "step_times" in r and r.get("bench") is None}
    for r in rows:
        anchor = anchors.get(("unsloth", r.get("seq")))
        if r.get("bench") == "pipeline_sft" and anchor:
            raw = anchor["tokens_per_s"]
            print(json.dumps({"pipeline_backend": r["backend"], "section": r.get("section"), "seq": r["seq"],
                              "bs": r["bs"], "grad_accum": r["grad_accum"], "packing": r.get("packing"),
                              "pipeline_tokens_per_s": r["tokens_per_s"],
                              "pipeline_tokens_per_s_second_half": r.get("tokens_per_s_second_half"),
                              "raw_unsloth_tokens_per_s": raw, "raw_unsloth_bs": anchor["bs"],
                              "ratio_vs_raw_unsloth": round(r["tokens_per_s"] / raw, 3),
                              "ratio_second_half": round(r.get("tokens_per_s_second_half", 0) / raw, 3),
                              "ratio_median_step": round(r.get("tokens_per_s_median_step", 0) / raw, 3),
                              "variant": r.get("variant"),
                              "pipeline_peak_alloc_GiB": r["peak_alloc_GiB"],
                              "raw_unsloth_peak_alloc_GiB": anchor["peak_alloc_GiB"]}))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sft", "packing", "dpo", "layout", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--backend", choices=("unsloth", "hf"), required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--seq", type=int, help="sft: default the real preset's stage1.max_seq_length")
        p.add_argument("--bs", type=int, help="sft: default the real preset's stage1.batch_size")
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--records", type=int, default=200)
        p.add_argument("--adapter-out")
        p.add_argument("--packing", choices=("bfd", "wrapped"), help="sft: default the real preset's")
        p.add_argument("--grad-accum", type=int, help="sft: default the real preset's stage1.grad_accum")
        p.add_argument("--adapter")
        p.add_argument("--section", choices=("stage1", "stage2"), default="stage1",
                       help="sft: the real preset's section to start from")
        p.add_argument("--data", help="sft: a chat JSONL to train on (e.g. the synthetic Stage 2 set) instead of "
                                      "generated conversations")
        p.add_argument("--no-token-count", action="store_true",
                       help="sft variant: turn off the Trainer's per-micro-batch token count (a device sync)")
    auto = sub.add_parser("auto", help="a real-preset training stage under train.layout and a memory cap")
    auto.add_argument("--stage", choices=("stage1", "stage2", "dpo"), required=True)
    auto.add_argument("--backend", choices=("unsloth", "hf"), required=True)
    auto.add_argument("--model", required=True)
    auto.add_argument("--layout", choices=("auto", "recipe"), default="auto")
    auto.add_argument("--cap", type=float, help="GiB the process may use (train.memory_limit_gib); default: the card")
    auto.add_argument("--steps", type=int, default=6)
    auto.add_argument("--records", type=int, default=200)
    auto.add_argument("--data", help="the stage's JSONL (Stage 2: data/stage2/train.jsonl, DPO: data/dpo/pairs.jsonl)")
    auto.add_argument("--adapter", help="dpo: the Stage 2 adapter it starts from")
    auto.add_argument("--adapter-out")
    auto.add_argument("--seq", type=int, help="default: the real preset's max_seq_length of the stage")
    auto.add_argument("--bs", type=int, help="default: the real preset's batch_size of the stage")
    auto.add_argument("--grad-accum", type=int, help="default: the real preset's grad_accum of the stage")
    auto.add_argument("--micro-batch", type=int, help="pin the layout's micro-batch")
    auto.add_argument("--checkpointing", choices=("unsloth", "on", "off"), help="pin the layout's checkpointing")
    auto.add_argument("--variant", choices=("none", "single-doc-rows"),
                      help="a diagnostic change to the built trainer (see apply_variant)")
    auto.add_argument("--profile", action="store_true",
                      help="torch.profiler over steps 3-4 (left out of tokens_per_s): GPU busy share, top ops")
    sub.add_parser("attn", help="which attention kernels unsloth and torch's SDPA would use here")
    rows = sub.add_parser("auto-rows", help="auto runs against their anchors: the h200-7b-auto-layout.jsonl rows")
    rows.add_argument("file")
    r = sub.add_parser("ratio")
    r.add_argument("file")
    return ap


if __name__ == "__main__":
    a = parser().parse_args()
    if a.cmd == "ratio":
        ratio(a)
    elif a.cmd == "auto-rows":
        auto_rows(a)
    elif a.cmd == "attn":
        print(json.dumps(attention_info()), flush=True)
    else:
        modes = {"sft": bench_sft, "packing": bench_packing, "dpo": bench_dpo, "layout": bench_layout,
                 "profile": bench_profile, "auto": bench_auto}
        print(json.dumps(modes[a.cmd](a)), flush=True)
