"""python -m experiments: every experiment that draws docs/, on one run loop (experiments/loop.py).

Each --experiment is a list of runs of the six scripts with their own flags, as child processes
(experiments/frontier.py, goodhart.py and lecture.py say what each one runs and why). A run whose
final point is already in the results is skipped, so an interrupted experiment resumes; a run
that fails does not stop the others (the command ends by naming it, and the same command retries
it). After the runs, every figure and table whose data are in --out is drawn again.
  frontier, dpo-epochs, online-offline, seeds         experiments/frontier.py
  goodhart, goodhart-mitigation                       experiments/goodhart.py (amx-217's record)
  gao-gold, gao, gao-far, gao-mitigation, gao-stop    experiments/gao.py (a learned gold)
  variance, loss-family, tax, iterative, sensitivity  experiments/lecture.py (all five: lecture)
  defaults                                            experiments/defaults.py (README's table)
Run: python -m experiments --quick      (the β sweep: ≈ 19 min on a 2-core bf16 CPU once out/sft
                                         and out/reward_model exist, which it builds if missing)
     python -m experiments --quick --experiment goodhart
     python -m experiments --experiment lecture
     python -m experiments --out docs --redraw   (every figure and table from docs/*.jsonl)
"""
import os

import common as c
from experiments import defaults, frontier, gao, goodhart, lecture
from experiments.loop import Config, run_experiment

# name → (its file, measured minutes of its own runs with --quick, without --quick; None: not
# measured), from out/sft and out/reward_model on a 2-core Intel Xeon with AMX-BF16, bf16 (fp32
# ≈ 5× more). The lecture's five have quick settings only; their minutes are in `lecture` order,
# each without the runs an earlier one shares (docs/lecture_measured.md: 36.5 min in all).
EXPERIMENTS = {
    "frontier": (frontier, 19, 70), "dpo-epochs": (frontier, 4, 4),
    "online-offline": (frontier, 24, None), "seeds": (frontier, 20, None),
    "goodhart": (goodhart, 20, None), "goodhart-mitigation": (goodhart, 19, None),
    "gao-gold": (gao, None, None), "gao": (gao, None, None),
    "gao-far": (gao, None, None), "gao-mitigation": (gao, None, None),
    "gao-stop": (gao, None, None),
    "variance": (lecture, 5.8, 5.8), "loss-family": (lecture, 12.5, 12.5),
    "tax": (lecture, 5.3, 5.3), "iterative": (lecture, 4.1, 4.1),
    "sensitivity": (lecture, 8.7, 8.7), "defaults": (defaults, None, None)}
GROUPS = {"all": list(EXPERIMENTS), "lecture": lecture.NAMES}
CHOICES = {"experiment": [*EXPERIMENTS, *GROUPS]}


def own_runs(cfg, name):
    """The runs of an experiment that no experiment before it in the table shares."""
    earlier = list(EXPERIMENTS)[:list(EXPERIMENTS).index(name)]
    seen = {(r.script, r.flags, r.root) for e in earlier for r in EXPERIMENTS[e][0].runs(cfg, e)}
    return [r for r in EXPERIMENTS[name][0].runs(cfg, name)
            if (r.script, r.flags, r.root) not in seen]


def draw(out):
    """Every figure and table whose data are in out; whether there were any."""
    return any([m.draw(out) for m in (frontier, goodhart, gao, lecture, defaults)])


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES)
    device = c.setup(cfg.seed, cfg.precision)  # the runs inherit its precision
    if cfg.redraw:
        if not draw(cfg.out):
            c.die(f"{cfg.out} has no evaluation points to draw (results.jsonl, goodhart.jsonl,"
                  " gao.jsonl, measured.jsonl, tax.jsonl, grad_variance.jsonl, defaults.jsonl)")
        return
    names = GROUPS.get(cfg.experiment, [cfg.experiment])
    sft_dir = os.path.join(cfg.out, "sft")
    c.require(sft_dir, "sft.py", ["--out", cfg.out])
    if any(not name.startswith(("goodhart", "gao")) for name in names):  # (theirs: their own)
        c.require(os.path.join(cfg.out, "reward_model"), "reward_model.py", ["--out", cfg.out],
                  built_from=[sft_dir])
    failed = []
    for name in names:
        module, quick, full = EXPERIMENTS[name]
        minutes = quick if cfg.quick else full
        runs = module.runs(cfg, name)
        if minutes is not None:  # measured for its own runs: those shared are counted before
            minutes *= len(runs) / max(len(own_runs(cfg, name)), 1)
        if hasattr(module, "prepare"):
            module.prepare(cfg, name, device)
        after = module.after_run(cfg, device) if hasattr(module, "after_run") else None
        failed += run_experiment(name, runs, minutes, cfg.out, after)
        if hasattr(module, "finish"):
            module.finish(cfg, name, device)
    draw(cfg.out)  # (gao-gold trains the gold alone: nothing to draw)
    print(f"wrote the figures and tables in {cfg.out}")
    if failed:  # the others' points are kept
        c.die(f"{len(failed)} run(s) failed: {'; '.join(failed)}; the same command retries them")


if __name__ == "__main__":
    c.run(main)
