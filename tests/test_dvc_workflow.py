"""The whole DVC workflow on the embedded default, driven through the real `dvc` CLI.

One module-scoped fresh clone runs the README's pipeline command once; the tests then exercise what a DVC user
does next: no-op repro, an out edited in place, metrics show/diff, push/pull through the default local remote and
an SSH remote, corruption detection on pull, a bad `-S` value and a deleted adapter that cost no retraining, an
experiment on dpo.beta, and plots. Tests depend on each other's order.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_project, dvc

pytestmark = pytest.mark.slow

# Every stage of the graph, as `dvc repro` names them.
ALL_STAGES = {
    "params", "market", "snapshots", "synthesize", "stage2_data", "dpo_pairs", "stage1_data", "base_model",
    "stage1", "stage2", "stage3",
    "export@base", "export@stage2", "export@stage3", "evaluate@base", "evaluate@stage2", "evaluate@stage3",
    "compare",
}
# Stages whose only outputs are git-tracked (metrics, the params check). In a fresh clone of a committed run their
# deps come back byte-identical (every stage is deterministic), so DVC may rightly find them up to date and skip them.
METRICS_ONLY = {"params", "evaluate@base", "evaluate@stage2", "evaluate@stage3", "compare"}
# What a change of dpo.beta may rerun: Stage 3 and everything downstream of it, nothing else.
DOWNSTREAM_OF_DPO = {"stage3", "export@stage3", "evaluate@stage3", "compare"}
# The stage that validates every value of params.yaml: it runs whenever any value changes (one second, no output
# that changes), so that a bad value fails before any stage's outs are removed.
PARAMS_CHECK = {"params"}


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflow")
    origin = copy_project(base / "origin")
    clone = base / "clone"
    git(base, "clone", "-q", str(origin), str(clone))
    # The README's pipeline command, reusing this test run's virtualenv instead of building another one.
    env = {**os.environ, "VENV": sys.prefix, "DVC_NO_ANALYTICS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "scripts/pipeline.sh"], cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"pipeline failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return {"base": base, "clone": clone, "first": r.stdout + r.stderr, "seconds": seconds}


def test_fresh_clone_runs_every_stage_then_nothing(work):
    first = ran(work["first"])
    assert ALL_STAGES - METRICS_ONLY <= first <= ALL_STAGES, first
    again = dvc(work["clone"], "repro")
    assert ran(again.stdout) == set()
    assert "up to date" in again.stdout
    status = dvc(work["clone"], "status")
    assert "up to date" in status.stdout


def test_an_edit_in_place_of_an_out_never_reaches_the_cache(work):
    """An out edited in place (here appended to, as `echo ... >> file` does; root ignores the read-only mode) shows
    as modified, and `dvc checkout -f` brings back the bytes the run wrote: the cache object was not touched."""
    clone = work["clone"]
    out = clone / "data" / "synthetic" / "eval.jsonl"
    original = out.read_bytes()
    out.chmod(0o644)
    with out.open("ab") as f:
        f.write(b'{"x": 1}\n')
    assert "modified" in dvc(clone, "status").stdout
    dvc(clone, "checkout", "-f")
    assert out.read_bytes() == original
    assert "up to date" in dvc(clone, "status").stdout


def test_metrics_show_puts_models_side_by_side(work):
    shown = json.loads(dvc(work["clone"], "metrics", "show", "--json").stdout)
    files = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    evals = {k: v["data"] for k, v in files.items() if k.startswith("metrics/eval/")}
    assert {Path(k).stem for k in evals} >= {"base", "stage2", "stage3"}
    keys = [sorted(v) for v in evals.values()]
    assert all(k == keys[0] for k in keys)  # identical keys: side by side in `dvc metrics show`


def _eval_metrics(clone: Path) -> dict[str, dict]:
    return {n: json.loads((clone / "metrics" / "eval" / f"{n}.json").read_text()) for n in ("base", "stage2", "stage3")}


def test_the_embedded_default_shows_learning(work):
    """The likelihood metrics on the held-out set: Stage 2 fits the answers better than the base, DPO separates
    chosen from rejected answers better than Stage 2. Seen on 2 cores: answer NLL 12.03 (base) -> 11.36 (Stage 2);
    preference margin 0.0108 -> 0.0307 and accuracy 0.625 -> 0.792 (Stage 2 -> 3, DPO seed 7). Over DPO seeds
    42, 7, 11, 3 (12 steps) the margin gain was +0.0005 to +0.020, the accuracy gain +0.125 to +0.17."""
    ev = _eval_metrics(work["clone"])
    nll = {n: m["likelihood"]["answer_nll"] for n, m in ev.items()}
    assert nll["stage2"] < nll["base"] - 0.2, nll
    pref = {n: m["preference"] for n, m in ev.items()}
    assert pref["stage3"]["margin_mean"] > pref["stage2"]["margin_mean"], pref
    assert pref["stage3"]["accuracy"] >= pref["stage2"]["accuracy"], pref
    assert all(m["preference"]["n_pairs"] == ev["base"]["preference"]["n_pairs"] > 0 for m in ev.values())
    # Evaluation during training: eval curves at eval_steps, the saved model's numbers in the summaries.
    train = work["clone"] / "metrics" / "train"
    for stage in ("stage1", "stage2", "stage3"):
        summary = json.loads((train / f"{stage}.json").read_text())
        rows = (train / stage / "plots" / "metrics" / "eval" / "loss.tsv").read_text().splitlines()[1:]
        assert len(rows) >= 2 and float(rows[-1].split("\t")[1]) == summary["eval_loss"], (stage, rows)
    # TRL's own held-out numbers: summed log-ratios against the Stage 2 reference, on the first eval_samples pairs.
    stage3 = json.loads((train / "stage3.json").read_text())
    assert stage3["eval_reward_margin"] > 0 and stage3["eval_loss"] < math.log(2), stage3


def test_held_out_pairs_share_no_prompt_with_the_training_pairs(work):
    def prompts(name: str) -> set[str]:
        lines = (work["clone"] / "data" / "dpo" / name).read_text(encoding="utf-8").splitlines()
        return {json.dumps(json.loads(line)["prompt"], sort_keys=True) for line in lines}

    held, train = prompts("eval_pairs.jsonl"), prompts("pairs.jsonl")
    assert held and train and held.isdisjoint(train)


def test_push_then_pull_into_a_second_clone_restores_everything(work):
    clone = work["clone"]
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "baseline run")
    dvc(clone, "push")
    remote = work["base"] / "kospi-ft-dvc-remote"  # the shipped default remote: ../../ of .dvc/
    assert any(remote.rglob("*")), "default remote received nothing"
    second = work["base"] / "second"
    git(work["base"], "clone", "-q", str(clone), str(second))
    dvc(second, "pull")
    assert "up to date" in dvc(second, "status").stdout
    r = dvc(second, "repro")
    assert ran(r.stdout) == set()


def test_corrupted_remote_object_is_detected_on_pull(work):
    remote = work["base"] / "kospi-ft-dvc-remote"
    objects = sorted(p for p in remote.rglob("*") if p.is_file() and p.stat().st_size > 1000)
    victim = objects[0]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    third = work["base"] / "third"
    git(work["base"], "clone", "-q", str(work["clone"]), str(third))
    r = dvc(third, "pull", "-v", check=False)
    assert r.returncode != 0
    assert "failed to pull data" in r.stdout + r.stderr
    assert "corrupted cache file" in r.stdout + r.stderr  # remote.verify re-hashed the download
    data[len(data) // 2] ^= 0xFF  # restore for the tests after this one
    victim.write_bytes(bytes(data))


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_remote_added_the_readme_way_verifies_and_a_bad_object_never_lands(work):
    """README: `dvc remote add NAME URL` + `dvc remote modify NAME verify true`. A corrupted object on it makes
    `dvc pull` fail, and no workspace file has other bytes than the run wrote (DVC's default, verify off, would
    check the corrupted file out and report `dvc status` clean)."""
    clone, base = work["clone"], work["base"]
    dvc(clone, "remote", "add", "second", str(base / "second-remote"))
    dvc(clone, "remote", "modify", "second", "verify", "true")
    git(clone, "add", ".dvc/config")
    git(clone, "commit", "-qm", "second remote")
    dvc(clone, "push", "-r", "second")
    objects = sorted((p for p in (base / "second-remote").rglob("*") if p.is_file() and p.stat().st_size > 1000),
                     key=lambda p: p.stat().st_size)
    victim = objects[-1]  # the largest object: a model file
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    fifth = base / "fifth"
    git(base, "clone", "-q", str(clone), str(fifth))
    r = dvc(fifth, "pull", "-r", "second", check=False)
    assert r.returncode != 0 and "Checkout failed" in r.stdout + r.stderr
    good = {f.parent.name + f.name for f in (clone / ".dvc" / "cache" / "files" / "md5").rglob("*")
            if f.is_file() and not f.name.endswith(".dir")}
    in_git = set(git(fifth, "ls-files").splitlines())
    pulled = [f for top in ("data", "models") for f in (fifth / top).rglob("*")
              if f.is_file() and f.relative_to(fifth).as_posix() not in in_git]
    assert pulled, "nothing was checked out at all"
    assert all(_md5(f) in good for f in pulled), [f for f in pulled if _md5(f) not in good]
    # What the check guards against: the same pull with verification off succeeds with the bad bytes in place.
    sixth = base / "sixth"
    git(base, "clone", "-q", str(clone), str(sixth))
    dvc(sixth, "remote", "modify", "--local", "second", "verify", "false")
    dvc(sixth, "pull", "-r", "second")
    bad = [f for top in ("data", "models") for f in (sixth / top).rglob("*")
           if f.is_file() and f.relative_to(sixth).as_posix() not in in_git and _md5(f) not in good]
    assert bad and "up to date" in dvc(sixth, "status").stdout
    data[len(data) // 2] ^= 0xFF  # restore: a local remote may share the object's inode with the clone's cache
    victim.write_bytes(bytes(data))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """An OpenSSH server on 127.0.0.1 for this test only (Debian's openssh-server)."""
    if not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0:
        pytest.skip("needs root and /usr/sbin/sshd (apt-get install openssh-server)")
    pytest.importorskip("dvc_ssh")
    key = tmp_path / "id_ed25519"
    host = tmp_path / "host_ed25519"
    for k in (key, host):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    auth = tmp_path / "authorized_keys"
    shutil.copy(f"{key}.pub", auth)
    port = _free_port()
    cfg = tmp_path / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n"
                   f"PidFile {tmp_path}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                   "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                   "Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-500:]}")
    yield {"port": port, "key": key}
    proc.terminate()
    proc.wait(timeout=10)


def test_push_and_pull_through_an_ssh_remote(work, sshd, tmp_path):
    clone = work["clone"]
    url = f"ssh://root@127.0.0.1:{sshd['port']}{tmp_path}/ssh-remote"
    dvc(clone, "remote", "add", "--local", "sshremote", url)
    dvc(clone, "remote", "modify", "--local", "sshremote", "verify", "true")  # the README way
    dvc(clone, "remote", "modify", "--local", "sshremote", "keyfile", str(sshd["key"]))
    dvc(clone, "push", "-r", "sshremote")
    assert any((tmp_path / "ssh-remote").rglob("*"))
    fourth = work["base"] / "fourth"
    git(work["base"], "clone", "-q", str(clone), str(fourth))
    dvc(fourth, "remote", "add", "--local", "sshremote", url)
    dvc(fourth, "remote", "modify", "--local", "sshremote", "keyfile", str(sshd["key"]))
    dvc(fourth, "pull", "-r", "sshremote")
    assert "up to date" in dvc(fourth, "status").stdout


def test_a_bad_value_fails_before_any_out_is_removed_and_costs_no_rerun(work):
    """A typo in `dvc exp run -S` (or in params.yaml) fails in the params stage, before DVC removes the outs of
    the stage that reads the key: once it is fixed, `dvc repro` retrains nothing. Keys no stage lists (the preset
    switch, the presets block) are validated the same way. (After the push test's commit: `dvc exp run` stashes
    uncommitted changes and applies them again, and git may then miss a same-size rewrite of a tracked metrics
    file within the same second, so the experiments here run on a committed workspace, as DVC advises.)"""
    clone = work["clone"]
    kept = [clone / "models" / "stage2" / "adapter_model.safetensors", clone / "metrics" / "train" / "stage2.json"]
    before = [p.read_bytes() for p in kept]
    for setting, message in [("stage2.lr=0", "stage2.lr"), ("preset=real", "preset: real"),
                             ("presets.real.stage2.lr=fast", "presets.real.stage2")]:
        r = dvc(clone, "exp", "run", "-S", setting, check=False)
        assert r.returncode != 0, f"{setting} was accepted:\n{r.stdout[-2000:]}"
        assert message in r.stdout + r.stderr, (setting, r.stdout[-2000:], r.stderr[-2000:])
        assert ran(r.stdout) == PARAMS_CHECK, setting
        git(clone, "checkout", "--", "params.yaml")
        assert [p.read_bytes() for p in kept] == before, setting
    # The same edit made by hand, then `dvc repro`.
    shipped = (clone / "params.yaml").read_text(encoding="utf-8")
    (clone / "params.yaml").write_text(shipped.replace("\npreset: embedded", "\npreset: real", 1), encoding="utf-8")
    r = dvc(clone, "repro", check=False)
    assert r.returncode != 0 and "preset: real" in r.stdout + r.stderr and ran(r.stdout) == PARAMS_CHECK
    git(clone, "checkout", "--", "params.yaml")
    assert [p.read_bytes() for p in kept] == before
    r = dvc(clone, "repro")
    assert ran(r.stdout) <= PARAMS_CHECK
    assert "up to date" in dvc(clone, "status").stdout


def test_a_deleted_adapter_whose_inputs_did_not_change_is_restored_not_retrained(work):
    """`rm -rf models/stage1` (a stray delete): DVC's run cache holds the training stages (no `persist` outs), so
    `dvc repro` checks the adapter and its metrics out again instead of training Stage 1 from step 0."""
    clone = work["clone"]
    adapter = clone / "models" / "stage1"
    before = (adapter / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(adapter)
    r = dvc(clone, "repro")
    assert ran(r.stdout) == set(), r.stdout[-2000:]
    assert "Stage 'stage1' is cached - skipping run" in r.stdout + r.stderr
    assert (adapter / "adapter_model.safetensors").read_bytes() == before
    assert "up to date" in dvc(clone, "status").stdout


def test_exp_run_dpo_beta_reruns_only_stage3_and_downstream(work):
    clone = work["clone"]
    r = dvc(clone, "exp", "run", "-S", "dpo.beta=0.3", "--name", "beta03")
    stages = ran(r.stdout)
    assert "stage3" in stages
    allowed = DOWNSTREAM_OF_DPO | PARAMS_CHECK
    assert stages <= allowed, f"reran more than Stage 3 and its downstream: {stages - allowed}"
    shown = dvc(clone, "exp", "show", "--json")
    assert "beta03" in shown.stdout and "metrics/eval/stage3.json" in shown.stdout


def test_metrics_diff_shows_stage3_changing(work):
    # `dvc exp run` leaves the experiment's results in the workspace: diff HEAD (baseline) against it.
    r = dvc(work["clone"], "metrics", "diff", "--json")
    diff = json.loads(r.stdout)
    assert any(k.startswith("metrics/train/stage3") or k == "metrics/eval/stage3.json" for k in diff), diff
    assert not any(k.startswith("metrics/train/stage2") or k == "metrics/eval/stage2.json" for k in diff)
    # The likelihood metrics move with beta on the tiny model, where every generation rate stays 0.
    stage3 = diff["metrics/eval/stage3.json"]
    for key in ("likelihood.answer_nll", "preference.margin_mean"):
        assert stage3[key]["diff"] != 0, (key, stage3.get(key))
    assert diff["metrics/train/stage3.json"]["eval_reward_margin"]["diff"] != 0


def test_guided_replies_of_every_model_are_valid_answers(work):
    """The guided pass (evaluate.guided_samples) of the random-init model and its fine-tunes: every reply parses and
    passes the schema, so the strategy and trading scorers run on real replies; the free pass's replies do not."""
    ev = _eval_metrics(work["clone"])
    for name, m in ev.items():
        guided = m["guided"]
        assert guided["n_samples"] >= 1 and guided["json"]["valid_rate"] == 1.0, (name, guided["json"])
        assert guided["schema"]["compliance_rate"] == 1.0, (name, guided["schema"])
        assert guided["trading"]["regime"]["n"] == guided["n_samples"]
        assert set(guided) == set(m) - {"guided", "likelihood", "preference"}
        assert m["json"]["valid_rate"] == 0.0


def test_plots_render_training_curves_and_eval_comparison(work):
    out = work["base"] / "plots"
    dvc(work["clone"], "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "loss" in html and "eval" in html


@pytest.mark.ddp
def test_stage1_under_ddp_through_dvc_writes_the_same_outs_layout(work):
    """train.num_processes=2: `dvc repro` starts the stage through torchrun (two gloo processes here) and the
    outs look as with one process. Last in this module: it leaves Stage 1 retrained."""
    from kospi_ft import params

    clone = work["clone"]

    def layout() -> list[str]:
        return sorted(p.relative_to(clone).as_posix() for top in ("models/stage1", "metrics/train/stage1")
                      for p in (clone / top).rglob("*") if p.is_file())

    single = layout()
    params.update(clone / "params.yaml", "train.num_processes", 2)
    params.update(clone / "params.yaml", "stage1.grad_accum", 2)  # split as 1 micro-batch per process
    r = dvc(clone, "repro", "--single-item", "stage1")
    assert ran(r.stdout) == {"stage1"}
    assert layout() == single
    metrics = json.loads((clone / "metrics" / "train" / "stage1.json").read_text())
    assert (metrics["processes"], metrics["effective_batch"]) == (2, 2)
