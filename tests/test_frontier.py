"""frontier.py: the upper envelope, best-of-n and its KL bound, resuming, a tiny sweep."""
import json, math, shutil

import torch

import common as c
import frontier
from conftest import run_script


def test_upper_frontier_by_hand():
    points = [(0.0, 0.2), (3.0, 0.5), (2.0, 0.6), (5.0, 0.55), (8.0, 0.9), (8.0, 0.7), (1.0, 0.1)]
    assert frontier.upper_frontier(points) == [(0.0, 0.2), (2.0, 0.6), (8.0, 0.9)]


def test_best_of_n_picks_by_proxy_and_bounds_kl():
    gold = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.0, 0.8, 0.4]])
    proxy = torch.tensor([[0.0, 1.0, 2.0, 0.0], [5.0, 0.0, 1.0, 9.0]])
    rows = frontier.best_of_n(gold, proxy, [1, 2, 4])
    assert [n for n, _, _ in rows] == [1, 2, 4]
    # n=1: the first sample; n=2: best proxy of the first two; n=4: best proxy of all four
    assert [round(g, 6) for _, g, _ in rows] == [0.15, round((0.9 + 0.2) / 2, 6), 0.45]
    assert rows[0][2] == 0.0 and math.isclose(rows[1][2], math.log(2) - 0.5)
    assert math.isclose(rows[2][2], math.log(4) - 0.75)


def finished_stage(path, **inputs):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "run.json").write_text(json.dumps({"id": path.name, "inputs": inputs}))


def test_resume_skips_finished_runs(tmp_path):
    """With every final point already in results.jsonl, nothing runs: it only draws."""
    finished_stage(tmp_path / "sft")
    finished_stage(tmp_path / "reward_model", sft="sft")
    rows = [{"run": "sft", "algo": "sft", "step": 0, "kl": 0.0, "gold": 0.2, "proxy": None}]
    runs = [(frontier.key_of(script, flags, str(tmp_path)), script[:-3]) for script, _, flags in
            frontier.sweep(quick=True)] + [("best-of-n", "best-of-n")]
    for i, (key, algo) in enumerate(runs):
        rows += [{"run": key, "algo": algo, "variant": "rm" if algo == "ppo" else "", "beta": 0.1,
                  "step": s, "final": s == 10, "kl": 0.5 * s + i, "gold": 0.2 + 0.05 * s,
                  "proxy": 0.3 * s} for s in (0, 10)]
    c.replace_rows(tmp_path / "results.jsonl", None, rows)
    proc = run_script("frontier.py", "--out", tmp_path, "--quick")
    assert proc.stdout.count("skipped") == len(frontier.sweep(quick=True))
    for name in ("frontier.png", "overoptimisation.png", "frontier.md"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "frontier.md").read_text()
    assert "| ppo-rm | 0.200 | 0.700 | 0.700 | 0.700 |" in table  # points at KL 0 and 5


def test_tiny_sweep_end_to_end(pipeline, tmp_path):
    out = tmp_path / "out"  # a copy: the sweep's points stay out of the other tests' way
    shutil.copytree(pipeline, out)
    tiny = "--steps 2 --eval-every 2 --max-new-tokens 8 --n-eval-prompts 16 --batch-size 16"
    run_script("frontier.py", "--out", out, "--quick", "--extra", tiny, "--bon-prompts", 8,
               "--bon-max-n", 4, "--max-new-tokens", 8)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    finished = {r["run"] for r in rows if r.get("final")}
    keys = {frontier.key_of(script, [*map(str, flags), *tiny.split()], str(out))
            for script, _, flags in frontier.sweep(quick=True)}
    assert keys | {"best-of-n"} <= finished
    assert {(r["algo"], r["variant"]) for r in rows} >= {("ppo", "rm"), ("ppo", "gt"),
                                                         ("dpo", "sigmoid"), ("grpo", "rm")}
    bon = [r for r in rows if r["run"] == "best-of-n"]
    assert [r["n"] for r in bon] == [1, 2, 4] and bon[0]["kl"] == 0.0
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "preferred_ft" / "config.json").exists()


def test_redraw_trains_nothing(tmp_path):
    rows = [{"run": "sft", "algo": "sft", "step": 0, "kl": 0.0, "gold": 0.2, "proxy": None},
            {"run": "r", "algo": "rloo", "variant": "rm", "step": 0, "kl": 0.0, "gold": 0.2,
             "proxy": 0.0},
            {"run": "r", "algo": "rloo", "variant": "rm", "step": 10, "kl": 3.0, "gold": 0.6,
             "proxy": 1.0}]
    c.replace_rows(tmp_path / "results.jsonl", None, rows)
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"run": "cut off mid-li\n')  # a corrupt line: skipped with a warning
    proc = run_script("frontier.py", "--out", tmp_path, "--redraw")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "| rloo-rm | 0.200 | 0.600 | 0.600 | 0.600 |" in (tmp_path / "frontier.md").read_text()
    assert not (tmp_path / "reward_model").exists() and "missing" not in proc.stdout
    assert "line 4 is not JSON; skipped" in proc.stderr
    proc = run_script("frontier.py", "--out", tmp_path / "none", "--redraw", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
