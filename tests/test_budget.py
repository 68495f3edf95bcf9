"""bench/budget.py: the calls it multiplies by, and its table, worked out by hand."""
import os, sys

import torch

import common as c
import ppo
import reward_model
import sft
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import budget  # noqa: E402


def test_counts_follow_the_defaults():
    n = budget.counts(sft.Config(steps=1010, eval_every=250), reward_model.Config(
        n_prompts=650, n_val_prompts=33, k=4, batch_size=16, eval_every=15, epochs=2),
        ppo.Config(steps=30, eval_every=10, ppo_epochs=4), chunk=128)
    assert n[("sft", "train step")] == 1010
    assert n[("sft", "held-out loss")] == 5  # steps 250, 500, 750, 1000 and the last, 1010
    # each split in chunks of 128: 650 × 4 = 2600 → 21 chunks, 33 × 4 = 132 → 2
    assert n[("reward model", "sample 128 responses")] == 23
    assert n[("reward model", "label 128 (VADER)")] == 23
    assert n[("reward model", "train step")] == 80  # 2 epochs of 650 // 16 = 40
    # validation at steps 15, 30, …, 75 and the last, 80; then twice more (the shift to mean 0,
    # the report)
    assert n[("reward model", "validation")] == 8
    assert n[("ppo", "rollout: sample")] == n[("ppo", "update (4 epochs × 4 minibatches)")] == 30
    # evaluations at step 0, 1, 2, 4, 8, 10, 20, 30
    assert n[("ppo", "evaluation")] == 8
    # at the defaults: held-out losses at SFT steps 250, 500, 750 and 900; chunks of 512:
    # 40,000 → 79 and 1,200 → 3; validation at 50, 100, …, 600 and the last, 625, then twice;
    # 9 PPO evaluations at 40 iterations (machines.md's older tables, at 100, show 15)
    n = budget.counts(sft.Config(), reward_model.Config(), ppo.Config())
    assert [n[k] for k in (("sft", "held-out loss"), ("reward model", "sample 512 responses"),
                           ("reward model", "validation"), ("ppo", "evaluation"),
                           ("ppo", "update (2 epochs × 4 minibatches)"))] == [4, 82, 15, 9, 40]


def test_budget_table_by_hand():
    # a: 10 calls of 3 s and 6e9 FLOPs (30 s); b: 1 call of 90 s and 9e10 (90 s); peak 4e9/s
    rows = [("x", "a", 10, 3.0, 6e9), ("y", "b", 1, 90.0, 9e10)]
    lines = budget.budget_table(rows, 4e9)
    # a: 0.50 min, 30 of 120 s = 25%, 2 GFLOP/s = 50% of the peak
    assert lines[2] == "| x | a | 10 | 3000 | 6.00 | 0.50 | 25% | 2 | 50% |"
    assert lines[3] == "| **x** | all |  |  |  | 0.50 | 25% | 2 | 50% |"
    # all: 2 min, 1.5e11 FLOPs in 120 s = 1.25 GFLOP/s = 31% of the peak
    assert lines[-1] == "| **pipeline** | all |  |  |  | 2.00 | 100% | 1 | 31% |"


def test_every_part_runs_and_counts_its_flops():
    torch.manual_seed(0)
    policy = c.build_model(512, 1, 2, 32, 128)
    enc = c.tokenizer(512)
    s = sft.Config(batch_size=4, max_len=16)
    r = reward_model.Config(batch_size=2, k=2, n_val_prompts=4)
    p = ppo.Config(batch_size=4, minibatch_size=2, n_eval_prompts=4, max_new_tokens=4,
                   ppo_epochs=4)
    device = torch.device("cpu")
    fns = budget.parts(s, r, p, policy, enc, device)
    assert fns.keys() == budget.counts(s, r, p, budget.chunk_of(device)).keys()
    flops = {}
    for (stage, part), fn in fns.items():
        sec, flops[part] = budget.measure(fn, 1, lambda: None)
        assert sec > 0
        # VADER is no matrix product; every other part is
        assert (flops[part] == 0) == (part == "label 512 (VADER)"), (stage, part, flops[part])
    # the update: 4 epochs of policy and critic forward + backward (3 passes each); the scoring:
    # π_old and π_ref (the policy's shape) and r_φ and the critic (the critic's) once each
    ratio = flops["update (4 epochs × 2 minibatches)"] / flops[
        "rollout: score (r_φ, π_old, π_ref, critic)"]
    assert abs(ratio - 6) < 0.1, ratio
