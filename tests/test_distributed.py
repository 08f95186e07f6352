"""torch.distributed (gloo, CPU): real multi-process jobs launched with torchrun on the tiny model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from opo.models import load_model

pytestmark = pytest.mark.e2e  # subprocesses: `pytest -m "not e2e"` skips them

FIXTURE = Path(__file__).parent / "fixtures" / "dist_step.py"
REWARD = Path(__file__).parent / "fixtures" / "rewards.py"
TINY = [f"task.reward_fn={REWARD}:varied", "model.path=tiny", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "task.eval_size=6", "train.eval_max_new_tokens=6", "run.progress=false", "run.deterministic=true",
        "train.eval_before=false", "optim.lr=1e-3", "train.micro_batch_tokens=64", "checkpoint.keep=5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def opo_train(nproc: int, *settings: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = torchrun(nproc, "-m", "opo", "train", *settings) if nproc > 1 else [sys.executable, "-m", "opo", "train",
                                                                             *settings]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_two_processes_take_the_same_step_as_one(tmp_path):
    subprocess.run([sys.executable, str(FIXTURE), str(tmp_path / "one.pt")], check=True, env=ENV, timeout=300)
    subprocess.run(torchrun(2, str(FIXTURE), str(tmp_path / "two.pt")), check=True, env=ENV, timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    start = {n: p.detach() for n, p in load_model("tiny", seed=0)[0].named_parameters()}
    for case in ("opo", "grpo", "opo_batch", "grpo_offpolicy", "opo_fsdp", "grpo_offpolicy_fsdp", "opo_ragged",
                 "opo_ragged_fsdp"):
        a, b = one[case], two[case]
        if "ragged" in case:  # process 0's passes run several length buckets, process 1's one
            assert min(a["decoder_calls"][:3]) >= 3 and a["decoder_calls"][3:] == [2, 2], a["decoder_calls"]
            # the sampler's and the trainer's log-probs agree along completions of hundreds of tokens
            assert a["metrics"]["logprob_gap/max_abs"] < 1e-4
        moved = max(float((a["params"][n] - start[n]).abs().max()) for n in start)
        diff = max(float((a["params"][n] - b["params"][n]).abs().max()) for n in start)
        assert moved > 1e-3, case  # the step did something worth comparing
        assert diff < 1e-6, (case, diff)
        assert a["metrics"]["passes/train_forward"] >= 5  # one group per micro-batch: 3 and 2 per process
        for key in ("loss", "grad_norm", "entropy", "policy_shift/k3", "logprob_gap/max_abs"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5, abs=1e-9), (case, key)
    # Evaluation: the processes' shares are gathered into the whole result. Greedy completions
    # equal one process's; sampled ones come from each process's own stream, so only their count.
    e1, e2 = one["eval"], two["eval"]
    greedy = [x for x in e1["samples"] if x[1] == "greedy"]
    assert len(greedy) == 7 and sorted(x for x in e2["samples"] if x[1] == "greedy") == sorted(greedy)
    assert len(e2["samples"]) == len(e1["samples"]) == 7 * 3
    assert e2["metrics"]["eval/n"] == 7 and e2["metrics"]["eval/samples_per_problem"] == 2


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt: Path) -> dict:
    return load_file(ckpt / "model.safetensors")


def test_two_process_run_resumes_on_two_and_on_one_process(tmp_path):
    full = tmp_path / "full"
    done = opo_train(2, *TINY, "train.steps=3", "checkpoint.every=1", f"run.dir={full}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stdout and done.stdout.count("step    1") == 1  # rank 0 alone prints
    rows = [r for r in _rows(full) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["grad_norm"] > 0 for r in rows)
    assert sum(1 for line in (full / "samples.jsonl").open() if json.loads(line)["step"] == 1) == 4 * 3  # global
    final = _rows(full)[-1]  # the held-out evaluation after training (its gathering: the test above)
    assert final["step"] == 3 and final["eval/n"] == 6 and 0 <= final["eval/accuracy"] <= 1
    step2, step3 = (_weights(full / "checkpoints" / f"step_000000{i}") for i in (2, 3))
    assert not all(torch.equal(step2[k], step3[k]) for k in step3)  # the steps change the weights

    for nproc in (2, 1):
        run = _resume_dir(tmp_path / f"resume{nproc}", full / "checkpoints" / "step_0000002")
        res = opo_train(nproc, *TINY, "train.steps=3", "checkpoint.resume=true", f"run.dir={run}")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "continuing from" in res.stdout and (run / "checkpoints" / "step_0000003").is_dir()
        assert [r["step"] for r in _rows(run) if "reward/mean" in r] == [3]
        if nproc == 2:  # the same processes, the same samples: the uninterrupted run's weights exactly
            resumed = _weights(run / "checkpoints" / "step_0000003")
            assert all(torch.equal(resumed[k], step3[k]) for k in step3)


def test_fsdp_run_matches_the_replicated_run_and_resumes_on_one_process(tmp_path):
    replicated, sharded = tmp_path / "replicated", tmp_path / "sharded"
    for run, extra in ((replicated, []), (sharded, ["train.fsdp=true"])):
        res = opo_train(2, *TINY, "train.steps=2", "checkpoint.every=1", f"run.dir={run}", *extra)
        assert res.returncode == 0, res.stderr[-3000:]
    # Step 1 starts from the same weights and samples the same tokens: FSDP's gathered checkpoint
    # equals the replicated one to float tolerance.
    a, b = (_weights(r / "checkpoints" / "step_0000001") for r in (replicated, sharded))
    start = {n: p.detach() for n, p in load_model("tiny", seed=0)[0].named_parameters()}
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    # Its optimizer state is keyed by parameter name and whole, so one process without FSDP
    # continues it, and so do two with FSDP.
    for nproc, extra in ((1, []), (2, ["train.fsdp=true"])):
        run = _resume_dir(tmp_path / f"resume{nproc}", sharded / "checkpoints" / "step_0000001")
        res = opo_train(nproc, *TINY, "train.steps=2", "checkpoint.resume=true", f"run.dir={run}", *extra)
        assert res.returncode == 0, res.stderr[-3000:]
        assert [r["step"] for r in _rows(run) if "reward/mean" in r] == [2]


def _resume_dir(run: Path, ckpt: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt, run / "checkpoints" / ckpt.name)
    return run


def test_killing_one_rank_stops_the_job_with_that_ranks_failure(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(torchrun(2, "-m", "opo", "train", *TINY, "train.steps=200", f"run.dir={run}"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"the job exited ({proc.returncode}) before its first step:\n{proc.stdout.read()[-3000:]}")
            assert time.monotonic() < deadline, "the job never reached its first step"
            time.sleep(0.2)
        victim = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                      if p.environ().get("RANK") == "1" and "opo" in " ".join(p.cmdline()))
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=120)  # bounded: no hang on the surviving rank
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - killed < 120
    assert "rank     : 1" in out or "rank: 1" in out, out[-3000:]
    assert "SIGKILL" in out or "-9" in out, out[-3000:]


def test_a_parameter_no_process_reached_gets_no_gradient():
    fixture = Path(__file__).parent / "fixtures" / "unused_grad.py"
    done = subprocess.run(torchrun(2, str(fixture)), capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
