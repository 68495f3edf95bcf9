"""experiments/lecture.py, bench/grad_variance.py and the flags they use (dpo.py --rounds,
rloo.py --baseline): the variance formula and the estimators by hand, the rounds' labels, a tiny
experiment that resumes, records a failure and measures the tax."""
import json, os, sys

import pytest
import torch

import common as c
import dpo
import experiments.__main__ as entry
from conftest import ROOT, linked_out, run_main, run_script, spy
from experiments import lecture, loop
from experiments.loop import Config, key_of
from experiments.points import paths

sys.path.insert(0, os.path.join(ROOT, "bench"))
import grad_variance  # noqa: E402

TINY = ["--n-eval-prompts", 4, "--max-new-tokens", 8]


def test_gradient_noise_by_hand():
    # g = (1, 0), (3, 0), (2, 3): ḡ = (2, 1); deviations (−1, −1), (1, −1), (0, 2): Σ‖·‖² = 8
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    trace, signal = grad_variance.gradient_noise(grads.sum(0), grads.pow(2).sum().item(), 3)
    assert trace == pytest.approx(8 / 2)  # tr Σ with the m − 1 of a sample variance
    assert signal == pytest.approx(5 - 4 / 3)  # ‖ḡ‖² = 5, less tr Σ/m
    # against torch on random vectors
    g = torch.randn(50, 7, dtype=torch.float64)
    trace, _ = grad_variance.gradient_noise(g.sum(0), g.pow(2).sum().item(), 50)
    assert trace == pytest.approx(g.var(0).sum().item())


def test_estimators_by_hand():
    """The gradient of each surrogate with respect to log π(y_i|x) is −A_i/N: A_i = R_i
    (reinforce), R_i − R̄ (mean), R_i − the others' mean (loo); PPO's is −A_t/(real tokens)."""
    score = torch.tensor([1.0, 3.0, 2.0, 6.0])
    seq = torch.zeros(4, requires_grad=True)
    tok = torch.zeros(4, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    adv = torch.tensor([[1.0, 2.0], [3.0, 9.0], [0.0, -1.0], [4.0, 4.0]])
    losses = grad_variance.estimator_losses(score, seq, tok, adv, mask, k=2)
    expected = {"reinforce": [1, 3, 2, 6], "mean": [-2, 0, -1, 3], "loo": [-2, 2, -4, 4]}
    for name, a in expected.items():
        (g,) = torch.autograd.grad(losses[name], seq)
        torch.testing.assert_close(g, -torch.tensor(a, dtype=torch.float32) / 4)
    (g,) = torch.autograd.grad(losses["ppo-gae"], tok)
    torch.testing.assert_close(g, -adv * mask / 7)  # 7 real tokens; padding gets nothing


def test_runs_table_interpolates_and_names_failures():
    rows = [{"run": "a", "step": s, "kl": kl, "gold": g, "gold_se": 0.01}
            for s, kl, g in ((0, 0.0, 0.2), (1, 1.0, 0.4), (2, 3.0, 0.8))]
    lines = lecture.runs_table(paths(rows), [("a", "A"), ("b", "B")],
                                {"b": "KL exploded"})
    # KL 2 lies halfway between the evaluations at KL 1 and 3: gold 0.6; KL 5 is never reached
    assert lines[2] == "| A | a | 0.800 ± 0.010 | 3.00 | 0.600 | – |"
    assert lines[3].startswith("| B | b | stopped: KL exploded |")
    # at step 1 (equal samples): the point at step 1, and KL 2 is never reached up to it
    lines = lecture.runs_table(paths(rows), [("a", "A")], {}, step=1)
    assert lines[0].startswith("| run | key in measured.jsonl | step 1: gold | step 1: KL |")
    assert lines[2] == "| A | a | 0.400 ± 0.010 | 1.00 | – | – |"


def test_experiment_runs_are_well_formed():
    for name in lecture.NAMES:
        for script, label, flags in lecture.experiment_runs(name):
            cfg = key_of(script, [*map(str, flags)], "out")
            assert cfg and script in ("ppo.py", "rloo.py", "grpo.py", "dpo.py")
    keys = {n: [k for k, _ in v] for n, v in lecture.labels("out").items()}
    # equal labels in the iterative experiment: 150 steps of 32 pairs each
    assert all("steps=150" in k for k in keys["iterative"])
    # shared runs run once: variance's leave-one-out run is the RLOO lr grid's default, its PPO
    # run the PPO grid's default and the tax's; DPO at β 0.1 is the iterative experiment's
    # offline run
    ppo = "ppo-rm beta=0.1 steps=20"
    assert set(keys["variance"]) & set(keys["sensitivity"]) == {
        "rloo-rm beta=0.1 lr=3e-05 steps=50", ppo}
    assert set(keys["variance"]) & set(keys["tax"]) == {ppo}
    assert set(keys["loss-family"]) & set(keys["iterative"]) == {"dpo-sigmoid lr=0.0001 steps=150"}
    # the design's learning rates are pinned: a change of a script's default renames no run
    assert all("lr=" in k for n in keys for k in keys[n] if not k.startswith("ppo"))


def test_rounds_label_their_own_pairs(pipeline, tmp_path, monkeypatch):
    """--rounds 2 over 4 steps of 4 pairs: two rounds, each labelling 2 · 4 pairs from the policy
    it starts from (8 labels each, 16 in all: as many as online or the file would use)."""
    rounds = spy(monkeypatch, dpo, "judged_pairs")
    labelled = spy(monkeypatch, c, "labeler_scores")
    fed = spy(monkeypatch, dpo, "batch_logps")
    out = linked_out(tmp_path, pipeline)
    run_main(monkeypatch, dpo, "--out", out, *TINY, "--steps", 4, "--eval-every", 4,
             "--batch-size", 4, "--rounds", 2, "--judge", "labeler", "--lr", 1e-3)
    assert [call["n"] for call in rounds] == [8, 8] and len(labelled) == 2
    batches = [call["pairs"] for call in fed if call["out"][0].requires_grad]
    assert batches[0] + batches[1] == rounds[0]["out"] and batches[2] + batches[3] == \
        rounds[1]["out"]


def test_grad_variance_on_the_tiny_pipeline(pipeline, tmp_path):
    out = linked_out(tmp_path, pipeline)
    run_script("bench/grad_variance.py", "--out", out, "--batches", 4, "--prompts", 2, "--k", 2,
               "--max-new-tokens", 8)
    rows = c.read_jsonl(out / "grad_variance.jsonl")
    assert [r["estimator"] for r in rows] == grad_variance.ESTIMATORS == lecture.ESTIMATORS
    assert all(r["trace"] > 0 and len(r["trace_halves"]) == 2 for r in rows)


def test_a_tiny_experiment_resumes_records_failures_and_measures_the_tax(
        pipeline, tmp_path, monkeypatch):
    out = linked_out(tmp_path, pipeline)
    (out / "results.jsonl").write_text((pipeline / "results.jsonl").read_text())
    small = [*TINY, "--batch-size", 2, "--minibatch-size", 8]
    tiny = [("rloo.py", "tiny", ["--steps", 2, "--eval-every", 2, *small]),
            ("rloo.py", "diverges", ["--steps", 3, *small, "--lr", 1e-2, "--max-kl", 1e-9])]
    monkeypatch.setattr(lecture, "experiment_runs", lambda name: tiny)
    monkeypatch.setattr(lecture, "NAMES", ["tax"])
    cfg = Config(out=str(out))
    device = torch.device("cpu")
    lecture.prepare(cfg, "tax", device)  # π_SFT's tax
    run_tax = lambda: loop.run_experiment(  # noqa: E731
        "tax", lecture.runs(cfg, "tax"), 1.0, cfg.out, lecture.after_run(cfg, device))
    failed = run_tax()
    assert len(failed) == 1 and "diverges" in failed[0]
    errors = c.read_jsonl(out / "failed.jsonl")
    assert len(errors) == 1 and "exploded" in errors[0]["error"]
    tax = {r["run"]: r for r in c.read_jsonl(out / "tax.jsonl")}
    key = key_of("rloo.py", [*map(str, tiny[0][2])], str(out))
    sft = next(r for r in tax.values() if r["algo"] == "sft")
    assert len(tax) == 2 and sft["kl"] == 0 and tax[key]["lm_loss"] > 0
    # a second call finds both runs done (one finished, one diverged) and trains nothing
    monkeypatch.setattr(loop.c, "run_child", lambda *a, **k: pytest.fail("reran"))
    assert run_tax() == []
    lecture.collect(str(out))
    rows = [json.loads(line) for line in open(out / "measured.jsonl")]
    assert {r["run"] for r in rows} == {sft["run"], key}
    assert lecture.draw(str(out))
    assert "| tiny |" in (out / "measured.md").read_text() and (out / "tax.png").exists()


def test_one_table_of_experiments_counts_shared_runs_once():
    """python -m experiments' table names each experiment of the five files once, every one
    has runs (but gao-gold, which trains the gold alone, and gao-mitigation and gao-stop before
    gao-far),
    and an experiment's minutes are for the runs no earlier one shares."""
    cfg = Config(out="out", quick=True)
    names = [n for m in (entry.frontier, entry.goodhart, entry.gao, lecture, entry.defaults)
             for n in m.NAMES]
    assert sorted(entry.EXPERIMENTS) == sorted(names) and len(set(names)) == len(names)
    for name, (module, _, _) in entry.EXPERIMENTS.items():
        assert name in module.NAMES and (module.runs(cfg, name) or name in (
            "gao-gold", "gao-mitigation", "gao-stop")), name  # (these: after gao-far)
    # the tax's PPO at 20 iterations is variance's: measured there
    assert len(entry.own_runs(cfg, "tax")) == len(lecture.runs(cfg, "tax")) - 1
    assert entry.GROUPS["lecture"] == lecture.NAMES


# ---------------------------------------------------------------- what each experiment hands on

def test_the_variance_runs_are_the_baselines_they_say():
    """Each REINFORCE run gets the baseline its label names (leave-one-out: rloo.py's default),
    so the three are three runs, not one run three times."""
    runs = [r for r in lecture.experiment_runs("variance") if r[0] == "rloo.py"]
    for script, label, flags in runs:
        baseline = label.split()[-1]
        given = flags[flags.index("--baseline") + 1] if "--baseline" in flags else "loo"
        assert given == baseline, label
    assert len({key_of(s, [*map(str, f)], "out") for s, _, f in runs}) == 3


def test_the_variance_table_compares_at_its_step(tmp_path):
    """measured.md's gold-per-sample table reads every run at step 20 (equal responses), not at
    its end: a run that rises after step 20 shows its step-20 gold."""
    out = str(tmp_path)
    keys = dict((label, key) for key, label in lecture.labels(out)["variance"])
    rows = [{"run": keys[label], "algo": "rloo", "variant": "rm", "step": s, "kl": s / 10,
             "gold": g, "gold_se": 0.01, "settings": {}}
            for label in keys for s, g in ((0, 0.2), (20, 0.3), (50, 0.9))]
    c.replace_rows(tmp_path / "measured.jsonl", None, rows)
    assert lecture.draw(out)
    table = (tmp_path / "measured.md").read_text().split("## Gold per sample")[1].split("##")[0]
    assert "| step 20: gold |" in table and table.count("| 0.300 ± 0.010 | 2.00 |") == len(keys)
    assert "0.900" not in table
