"""experiments/defaults.py: the README's tables over three pipelines, their floors, and the
refusal of runs made at older defaults (fast: no training)."""
import json, os

import pytest

from experiments import defaults


def _rows():
    """Three pipelines' final points, worked by hand below."""
    rows = []
    for seed, (bpb, acc, gold, kl) in enumerate([(1.77, 0.76, 0.90, 12.0), (1.76, 0.77, 0.92, 14.0),
                                                 (1.78, 0.75, 0.94, 16.0)]):
        p = f"p{seed}"
        rows += [{"algo": "sft", "final": True, "pipeline_seed": seed, "pipeline": p, "gold": 0.2,
                  "bits_per_byte": bpb},
                 {"algo": "reward_model", "pipeline_seed": seed, "pipeline": p,
                  "val_acc_gold": acc},
                 {"algo": "ppo", "final": True, "pipeline_seed": seed, "pipeline": p, "gold": gold,
                  "proxy": 3.0, "kl": kl}]
    return rows


def test_table_gives_mean_and_sd_over_the_pipelines():
    lines = defaults.table(_rows())
    # gold 0.90, 0.92, 0.94: mean 0.92, sd sqrt((0.02² + 0 + 0.02²)/2) = 0.02; KL 14.0 ± 2.0
    assert "| `python ppo.py` | 0.920 ± 0.020 | 3.00 ± 0.00 | 14.0 ± 2.0 | 0.900 · 0.920 · 0.940 |" \
        in lines
    assert any(line.startswith("| `python sft.py` | bits per byte") and "1.770 ± 0.010" in line
               for line in lines)
    assert defaults.pipelines(_rows()) == ["p0", "p1", "p2"]


def test_floors_are_means_over_the_pipelines():
    held = defaults.floors(_rows())
    assert held["bits_per_byte"][1:] == (pytest.approx(1.77), 1.78, True)  # mean 1.77 ≤ 1.78
    assert held["rm_acc_gold"][1] == pytest.approx(0.76) and held["rm_acc_gold"][3]
    assert held["ppo_gold"][0] == [0.90, 0.92, 0.94] and held["ppo_gold"][3]
    worse = [dict(r, bits_per_byte=1.80) if r["algo"] == "sft" else r for r in _rows()]
    assert not defaults.floors(worse)["bits_per_byte"][3]


def test_a_run_made_at_older_defaults_is_named(tmp_path):
    stage = tmp_path / "rloo"
    os.makedirs(stage)
    with open(stage / "run.json", "w") as f:
        json.dump({"id": "x", "inputs": {}, "config": {"lr": 3e-5, "out": "elsewhere", "seed": 1,
                                                       "k": 4}}, f)
    assert defaults.stale(str(stage), "rloo.py") == ["--lr: 3e-05 → 6e-05"]  # out, seed: ignored


def test_equal_kl_table_interpolates_each_pipelines_run():
    rows = [{"algo": "rloo", "pipeline_seed": s, "step": step, "kl": kl, "gold": g}
            for s, pts in enumerate([[(0, 0.0, 0.2), (10, 4.0, 0.6)],
                                     [(0, 0.0, 0.2), (5, 1.0, 0.3), (10, 3.0, 0.7)]])
            for step, kl, g in pts]
    # KL 2: 0.2 + 0.4·2/4 = 0.4 and 0.3 + 0.4·(2 − 1)/(3 − 1) = 0.5; mean 0.45, sd 0.1/√2
    # KL 5: neither run gets there
    assert defaults.equal_kl_table(rows)[2] == \
        "| `python rloo.py` | 0.450 ± 0.071 · 0.400 · 0.500 | – · – · – |"
