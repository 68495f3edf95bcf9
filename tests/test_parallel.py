"""Data parallelism under torchrun (parallel.py), on two CPU processes (gloo, one thread each).

Each two-rank run goes through tests/ddp_harness.py, which fails the run if the parameters ever
differ between the ranks (bit for bit) or if a rank other than 0 writes under --out. SFT and DPO
(no sampling) on two ranks must give the weights and losses of one process with the same global
batch; RLOO and PPO, given the same samples (the harness's fixed sampler), the same updates,
and their evaluation (split across the ranks) exactly one process's numbers. The one-process
reference runs in the test process.
"""
import glob, importlib, json, os, subprocess, sys, time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import common as c
from lib import parallel
from conftest import ROOT, linked_out, run_main
from ddp_harness import fixed_sampler

HARNESS = os.path.join(ROOT, "tests", "ddp_harness.py")
FP32 = {"RLHF_PRECISION": "fp32"}  # the comparisons are in fp32, as the issue asks
TINY = ["--n-ranks", 512, "--n-layer", 1, "--n-head", 2, "--n-embd", 32, "--max-len", 32,
        "--batch-size", 8, "--n-eval-prompts", 16, "--max-new-tokens", 8]


def launch(script, *args, env=None, check=True):
    """`torchrun --standalone --nproc_per_node 2` of the harness running script."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           HARNESS]
    proc = subprocess.run([*run, script, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                      **FP32, **(env or {})})
    if check:
        assert proc.returncode == 0, \
            f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "parameters identical on all ranks" in proc.stdout
    return proc


def one_process(monkeypatch, script, *args, fixed=False):
    """The reference run: `python script args` in this process, in fp32 (fixed=True: with the
    harness's fixed samples)."""
    monkeypatch.setenv("RLHF_PRECISION", "fp32")
    if fixed:
        monkeypatch.setattr(c, "sample", fixed_sampler())
    run_main(monkeypatch, importlib.import_module(script[:-3]), *args)


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def assert_same_weights(a, b, atol):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"weights differ by {worst:.2e}"


def two_outs(tmp_path, pipeline):
    """Two out/ directories linked to the tiny pipeline: one for one process, one for two ranks."""
    for name in ("1", "2"):
        (tmp_path / name).mkdir()
    return linked_out(tmp_path / "1", pipeline), linked_out(tmp_path / "2", pipeline)


def metrics(path):
    return [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]


def test_a_rank_takes_its_share(monkeypatch):
    """Rank 1 of 2 (as torchrun's environment says): the second half of a global batch, half of
    each global minibatch; a batch that 2 ranks cannot share equally is refused."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert parallel.share(list(range(8))) == [4, 5, 6, 7]
    assert parallel.share(torch.arange(6)).tolist() == [3, 4, 5]
    assert c.minibatches(4, 4) == [slice(0, 2), slice(2, 4)]  # its 4 rows, global minibatch 4
    assert parallel.check_divides(SimpleNamespace(batch_size=6)) is None
    assert parallel.check_divides(SimpleNamespace(batch_size=6, minibatch_size=3)).startswith(
        "--minibatch-size 3: each of the 2 ranks")


def test_reductions_on_three_ranks():
    """Masked means over every rank's tokens, weighted means, metrics (values alike on every
    rank kept exactly: (x + x + x)/3 is not always x), token-weighted gradient averages, gather
    and split_map: against the same numbers pooled by hand (tests/ddp_reductions.py)."""
    script = os.path.join(ROOT, "tests", "ddp_reductions.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "3", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "reductions: ok" in proc.stdout, proc.stderr[-3000:]


def test_sft_on_two_ranks_is_one_process(tmp_path, monkeypatch):
    """Each rank's share of a batch has its own number of response tokens: the gradients are
    averaged weighted by them, so the update is the one of the whole batch's token mean."""
    one, two = tmp_path / "one", tmp_path / "two"
    flags = [*TINY, "--steps", 3, "--eval-every", 3, "--warmup", 1, "--lr", 1e-3,
             "--n-eval-prompts", 4]
    one_process(monkeypatch, "sft.py", "--out", one, *flags)
    launch("sft.py", "--out", two, *flags)
    assert_same_weights(one / "sft", two / "sft", atol=1e-5)
    for a, b in zip(metrics(one / "sft"), metrics(two / "sft"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert metrics(two / "sft")[-1]["val_loss"] == pytest.approx(
        metrics(one / "sft")[-1]["val_loss"], abs=1e-5)


def test_dpo_on_two_ranks_is_one_process(tmp_path, pipeline, monkeypatch):
    one, two = two_outs(tmp_path, pipeline)
    flags = ["--steps", 3, "--batch-size", 8, "--eval-every", 10, "--n-eval-prompts", 8,
             "--max-new-tokens", 8, "--lr", 1e-4]
    one_process(monkeypatch, "dpo.py", "--out", one, *flags)
    launch("dpo.py", "--out", two, *flags)
    assert_same_weights(one / "dpo", two / "dpo", atol=1e-5)
    for a, b in zip(metrics(one / "dpo"), metrics(two / "dpo"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


# one minibatch a step, the statistics over the batch that the ranks share, and the logged
# metrics that are means over responses (a mean over a rank's tokens, averaged over the ranks,
# is not the batch's token mean: entropy, ratio, PPO's losses)
SAME_SAMPLES = {
    "rloo.py": (["--batch-size", 4, "--k", 2, "--minibatch-size", 8, "--baseline", "mean"],
                ["baseline", "pg_loss"]),
    "ppo.py": (["--batch-size", 4, "--minibatch-size", 4, "--target-kl", 1, "--horizon", 8],
               ["beta"]),
}
SHARED_METRICS = ["score", "kl", "non_score_reward", "length", "eval_gold", "eval_proxy",
                  "eval_kl"]


@pytest.mark.parametrize("script", SAME_SAMPLES)
def test_rl_on_two_ranks_given_the_same_samples_is_one_process(tmp_path, pipeline, monkeypatch,
                                                               script):
    """With one minibatch a step (with several, a global minibatch is made of other rows than
    one process's: each rank cuts its own share), the same weights and logged metrics: RLOO's
    batch-mean baseline, PPO's whitening (over every rank's tokens), its adaptive β and its
    token-weighted gradients. The evaluation before training, two batches split across the
    ranks and gathered, gives one process's numbers exactly."""
    one, two = two_outs(tmp_path, pipeline)
    flags, keys = SAME_SAMPLES[script]
    flags = [*flags, "--steps", 2, "--eval-every", 2, "--n-eval-prompts", 65,
             "--max-new-tokens", 8, "--lr", 1e-4]
    one_process(monkeypatch, script, "--out", one, *flags, fixed=True)
    launch(script, "--out", two, *flags, env={"DDP_FIXED_SAMPLES": "1"})
    stage = script[:-3]
    assert_same_weights(one / stage, two / stage, atol=1e-5)
    for a, b in zip(metrics(one / stage), metrics(two / stage), strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() & {*SHARED_METRICS, *keys}:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    before = [json.loads(open(out / stage / "points.jsonl").readline()) for out in (one, two)]
    assert before[0] == before[1]  # step 0: the same model, evaluated by 1 and by 2 ranks


@pytest.mark.parametrize("script,flags", [
    ("dpo.py", ["--online", "--judge", "labeler", "--batch-size", 4, "--steps", 2]),
    ("reward_model.py", ["--n-prompts", 64, "--n-val-prompts", 4, "--batch-size", 16,
                         "--epochs", 1]),
])
def test_sampling_stages_run_on_two_ranks(tmp_path, pipeline, script, flags):
    """Online DPO (each rank judges its share of the pairs) and the reward model (each rank
    samples and labels every other chunk of 128 responses): the harness checks that the
    parameters stay identical and that rank 1 writes nothing; the stage finishes. (GRPO shares
    its batch with the same line as RLOO, checked above, and is not run here.)"""
    out = linked_out(tmp_path, pipeline)
    stage = script[:-3]
    if stage == "reward_model":
        (out / "reward_model").unlink()
        (out / "preferences.jsonl").unlink()
    launch(script, "--out", out, *flags, "--n-eval-prompts", 8, "--max-new-tokens", 8)
    assert (out / stage / "run.json").is_file()
    if stage == "reward_model":  # 4 responses to each of 64 prompts (both ranks' chunks): 6 pairs
        pairs = [json.loads(line) for line in open(out / "preferences.jsonl")]
        assert sum(p["split"] == "train" for p in pairs) == 64 * 6


def test_a_failing_rank_ends_the_others(tmp_path, pipeline):
    """Rank 1 dies at its second gradient average: the run ends (no hang: the 300 s timeout), with
    rank 1's line, no traceback through the repo's code, and no half-written checkpoint."""
    out = linked_out(tmp_path, pipeline)
    proc = launch("rloo.py", "--out", out, "--steps", 4, "--batch-size", 4, "--k", 2,
                  "--minibatch-size", 8, "--eval-every", 1, "--n-eval-prompts", 8,
                  "--max-new-tokens", 8, env={"DDP_FAIL_AT": "2"}, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "harness: rank 1 fails on purpose at gradient average 2" in said
    ours = [f'{name}.py"' for name in ("rloo", "common", "runs", "parallel", "sampler")]
    assert not any(name in line for line in said.splitlines() for name in ours), said[-3000:]
    assert not (out / "rloo" / "run.json").exists()
    assert torch.isfinite(weights(out / "rloo")["transformer.wte.weight"]).all()  # step 1's, whole


def test_bad_input_under_torchrun_is_one_line(monkeypatch, capsys):
    """A batch the ranks cannot share, and a backend this machine lacks: one line each, before
    any process group is made (the environment torchrun would set is enough)."""
    import sft
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        c.parse_config(sft.Config, sft.__doc__, argv=["--batch-size", "8"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --batch-size 8: each of the 3 ranks" \
        " (torchrun --nproc_per_node 3) takes an equal share of it; give a multiple of 3"
    if torch.cuda.is_available():
        return
    monkeypatch.setenv("RLHF_BACKEND", "nccl")
    with pytest.raises(SystemExit) as stop:
        parallel.init(seed=0)
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: the nccl backend is not available here (nccl needs CUDA GPUs); set"
        " RLHF_BACKEND=gloo, or unset it for the automatic choice"]


def test_ranks_die_with_a_killed_torchrun(tmp_path, pipeline):
    """kill -9 of the torchrun agent at step 1: its ranks end too (the kernel sends them SIGTERM),
    so nothing finishes a run the user killed: no run.json, no points in results.jsonl."""
    out = linked_out(tmp_path, pipeline)
    log = open(tmp_path / "log", "w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "rloo.py"), "--out", str(out), *map(str, [
             "--steps", 500, "--batch-size", 4, "--k", 2, "--minibatch-size", 8, "--eval-every",
             500, "--n-eval-prompts", 8, "--max-new-tokens", 8])], cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **FP32})

    def ranks():  # the agent's children: the two ranks
        kids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = open(stat).read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == agent.pid:
                kids.append(int(stat.split("/")[2]))
        return kids
    deadline = time.time() + 240
    while not (out / "rloo" / ".next" / "metrics.jsonl").exists() \
            and not (out / "rloo" / "metrics.jsonl").exists():  # a rank is training
        assert agent.poll() is None and time.time() < deadline, open(tmp_path / "log").read()
        time.sleep(0.5)
    pids = ranks()
    assert len(pids) == 2
    agent.kill()
    agent.wait()
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1]
              .split()[0] != "Z" for p in pids):
        assert time.time() < deadline, "a rank outlived its killed torchrun"
        time.sleep(0.2)
    assert not (out / "rloo" / "run.json").exists()
    assert "rloo" not in {r["algo"] for r in c.read_results(out / "results.jsonl")}
