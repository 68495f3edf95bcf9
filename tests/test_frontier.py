"""experiments/frontier.py, its figures and the run loop: the envelope, best-of-n, experiments,
resuming, failures, tiny runs."""
import json, math, shutil

import torch

import common as c
import experiments.__main__ as entry
from conftest import run_experiments
from experiments import frontier, loop, points
from experiments.loop import Config, key_of
from lib.plots import upper_frontier


def test_upper_frontier_by_hand():
    points = [(0.0, 0.2), (3.0, 0.5), (2.0, 0.6), (5.0, 0.55), (8.0, 0.9), (8.0, 0.7), (1.0, 0.1)]
    assert upper_frontier(points) == [(0.0, 0.2), (2.0, 0.6), (8.0, 0.9)]


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
    runs = [(key_of(script, flags, str(tmp_path)), script[:-3]) for script, _, flags in
            frontier.sweep(quick=True)] + [("best-of-n", "best-of-n")]
    for i, (key, algo) in enumerate(runs):
        rows += [{"run": key, "algo": algo, "variant": "rm" if algo == "ppo" else "", "beta": 0.1,
                  "step": s, "final": s == 10, "kl": 0.5 * s + i, "gold": 0.2 + 0.05 * s,
                  "proxy": 0.3 * s} for s in (0, 10)]
    c.replace_rows(tmp_path / "results.jsonl", None, rows)
    proc = run_experiments("--out", tmp_path, "--quick")
    assert proc.stdout.count("skipped") == len(frontier.sweep(quick=True))
    for name in ("frontier.png", "proxy_and_gold.png", "frontier.md"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "frontier.md").read_text()
    assert "| ppo-rm | 0.200 | 0.700 | 0.700 | 0.700 |" in table  # points at KL 0 and 5


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    """One run fails: every other run still runs, and main ends with one line naming it."""
    calls = []

    def fake_child(cmd, **kwargs):
        calls.append(cmd)
        return 1 if "ppo.py" in cmd[1] and "0.02" in cmd else 0  # ppo-rm and ppo-gt at β 0.02

    monkeypatch.setattr(loop.c, "run_child", fake_child)
    cfg = Config(out=str(tmp_path), quick=True)
    failed = loop.run_experiment("frontier", frontier.runs(cfg, "frontier"), None, cfg.out)
    assert len(calls) == len(frontier.sweep(quick=True))
    assert [f.split(" (")[0] for f in failed] == ["ppo-rm β=0.02", "ppo-gt β=0.02"]
    assert {r["label"] for r in c.read_jsonl(tmp_path / "failed.jsonl")} == {
        "ppo-rm β=0.02", "ppo-gt β=0.02"}
    monkeypatch.setattr(entry, "run_experiment", lambda *args: failed[:1])
    monkeypatch.setattr(frontier, "run_best_of_n", lambda *args: None)
    monkeypatch.setattr(entry.c, "require", lambda *args, **kwargs: None)
    monkeypatch.setattr(entry, "draw", lambda out: None)
    monkeypatch.setattr("sys.argv", ["experiments", "--out", str(tmp_path)])
    try:
        entry.main()
    except SystemExit as e:
        assert e.code == 1
    else:
        raise AssertionError("main returned although a run failed")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 run(s) failed: ppo-rm β=0.02 (")


def test_tiny_sweep_end_to_end(pipeline, tmp_path):
    out = tmp_path / "out"  # a copy: the sweep's points stay out of the other tests' way
    shutil.copytree(pipeline, out)
    tiny = "--steps 2 --eval-every 2 --max-new-tokens 8 --n-eval-prompts 16 --batch-size 16"
    run_experiments("--out", out, "--quick", "--extra", tiny, "--bon-prompts", 8,
                    "--bon-max-n", 4, "--max-new-tokens", 8)
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    finished = {r["run"] for r in rows if r.get("final")}
    keys = {key_of(script, [*map(str, flags), *tiny.split()], str(out))
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
    proc = run_experiments("--out", tmp_path, "--redraw")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "| rloo-rm | 0.200 | 0.600 | 0.600 | 0.600 |" in (tmp_path / "frontier.md").read_text()
    assert not (tmp_path / "reward_model").exists() and "missing" not in proc.stdout
    assert "line 4 is not JSON; skipped" in proc.stderr
    proc = run_experiments("--out", tmp_path / "none", "--redraw", check=False)
    assert proc.returncode == 1 and "no evaluation points to draw" in proc.stderr


def test_gold_at_kl_interpolates_where_the_run_first_gets_there():
    path = [(0.0, 0.2), (2.0, 0.4), (6.0, 0.8), (4.0, 0.9)]  # KL falls back at the end
    assert math.isclose(points.gold_at_kl(path, 1.0), 0.3)
    assert math.isclose(points.gold_at_kl(path, 5.0), 0.7)  # on its first way up
    assert points.gold_at_kl(path, 2.0) == 0.4 and points.gold_at_kl(path, 7.0) is None


def test_mean_sd_and_seed_groups_by_hand():
    assert points.mean_sd([1.0, 2.0, 6.0]) == (3.0, math.sqrt(7.0))
    assert points.mean_sd([0.5]) == (0.5, 0.0)
    rows = [{"run": f"r{s}", "algo": "rloo", "variant": "rm", "beta": 0.1, "seed": s,
             "settings": {"beta": 0.1, **({"seed": s} if s else {})}, "step": t, "kl": t,
             "gold": s} for s in (0, 1) for t in (10, 0)]
    rows += [{**rows[0], "run": "other", "beta": 0.02, "settings": {"beta": 0.02}}]
    groups = frontier.seed_groups(rows)  # the β=0.02 run has one seed: no group
    assert list(groups) == ["rloo-rm β=0.1"]
    assert [[p["step"] for p in run] for run in groups["rloo-rm β=0.1"]] == [[0, 10], [0, 10]]
    table = frontier.seeds_table(groups)
    assert ("| rloo-rm β=0.1 (2) | 0.500 ± 0.707 | 10.000 ± 0.000 | 0.500 ± 0.707 | 0.500 ± 0.707 |"
            in table)


def test_online_and_offline_runs_see_as_many_labels():
    runs = frontier.runs(Config(out="out", quick=True, seeds=3), "online-offline")
    for beta in frontier.ONLINE_BETAS:
        mine = [r.flags for r in runs if str(beta) in r.flags]
        online = [f for f in mine if "--online" in f]
        assert online and len(online) == len(mine) - len(online)  # as many runs of each
        assert {f[f.index("--steps") + 1] for f in mine} == {"300"}  # steps · batch labels each
        assert all(f[f.index("--judge") + 1] == "labeler" for f in online)


def test_offline_runs_are_compared_at_the_online_runs_settings():
    online = {"algo": "dpo", "variant": "sigmoid-online",
              "settings": {"online": True, "judge": "labeler", "steps": 300, "beta": 0.03}}
    same = {"algo": "dpo", "variant": "sigmoid", "settings": {"steps": 300, "seed": 2}}
    others = [{**same, "settings": {}}, {**same, "settings": {"steps": 300, "n_pairs": 64}},
              {**online, "settings": {"online": True, "steps": 300}}]  # judged by r_φ
    assert frontier.online_offline_runs([online, same, *others]) == [online, same]


def test_redraw_every_experiment(tmp_path):
    """The redraw draws each experiment's figure from the committed files alone (Goodhart's:
    tests/test_goodhart.py)."""
    dpo = {"algo": "dpo", "beta": 0.1, "kl": 1.0, "gold": 0.5, "proxy": 0.0}
    runs = [("sigmoid", {"beta": 0.1}), ("sigmoid-online", {"online": True, "judge": "labeler"}),
            ("sigmoid", {"n_pairs": 64}), ("sigmoid", {"seed": 1})]
    c.replace_rows(tmp_path / "results.jsonl", None, [
        {**dpo, "run": str(i), "variant": v, "settings": s, "steps": 300, "seed": s.get("seed", 0),
         "step": t, "kl": 1.0 + t} for i, (v, s) in enumerate(runs) for t in (0, 32)])
    run_experiments("--out", tmp_path, "--redraw")
    for name in ("frontier.png", "dpo_epochs.png", "online_offline.png", "seeds.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    table = (tmp_path / "frontier.md").read_text()
    assert "| dpo-sigmoid β=0.1 (2) | 0.500 ± 0.000 | 33.000 ± 0.000 |" in table


def test_tiny_online_offline_experiment(pipeline, tmp_path):
    """An experiment other than the sweep: its runs (two seeds at the first β), its figure, the
    seeds' spread in frontier.md; and a rerun skips all of them."""
    out = tmp_path / "out"
    shutil.copytree(pipeline, out)
    tiny = "--steps 2 --eval-every 2 --max-new-tokens 8 --n-eval-prompts 16 --batch-size 16"
    args = ["--out", out, "--experiment", "online-offline", "--seeds", 2, "--extra", tiny]
    proc = run_experiments(*args)
    n = 2 * (2 + len(frontier.ONLINE_BETAS) - 1)  # two seeds at the first β, one at the others
    assert f"online-offline: {n} of {n} runs to do" in proc.stdout
    rows = c.read_jsonl(out / "results.jsonl")
    online = {(r["beta"], r["seed"]) for r in rows if r.get("variant") == "sigmoid-online"}
    first, *others = frontier.ONLINE_BETAS
    assert online == {(first, 0), (first, 1), *((b, 0) for b in others)}
    assert (out / "online_offline.png").read_bytes()[:4] == b"\x89PNG"
    seeds = [line for line in (out / "frontier.md").read_text().splitlines()
             if line.startswith("| dpo-sigmoid-online β=0.1 ") and "judge=labeler" in line]
    assert len(seeds) == 1 and " (2) | " in seeds[0]  # its two seeds, one row of the table
    assert f"online-offline: 0 of {n} runs to do" in run_experiments(*args).stdout
