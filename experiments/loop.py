"""experiments/loop.py: the one run loop of every experiment (`python -m experiments`).

An experiment is a list of Runs: a script, a label, its flags and the root directory it writes
under (its --out). run_experiment() runs each one whose final point is not yet in
<root>/results.jsonl as a child process, its output in <out>/logs/<experiment>/<label>.log. Each
run's points land in results.jsonl when it finishes (the script puts them there), so an
interrupted experiment resumes where it stopped. A run that fails does not stop the others: its
last line goes into <root>/failed.jsonl, and one that diverged (its KL exploded, a value went
non-finite) is a result, kept and not retried.
"""
import os, subprocess, sys, time
from dataclasses import dataclass
from typing import NamedTuple

import common as c
import dpo, grpo, ppo, reward_model, rloo, sft
from lib.results import publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the scripts are
SCRIPTS = {m.__name__ + ".py": m for m in (sft, reward_model, ppo, rloo, grpo, dpo)}
DIVERGED = ("exploded", "non-finite")  # a failed run's last line that makes it a result


@dataclass
class Config:
    out: str = "out"  # root directory: reads and extends out/results.jsonl
    experiment: str = "frontier"  # one of the table's, or lecture (its five), or all
    quick: bool = False  # the smaller β sweep and shorter Goodhart runs (≈ 19 min for the sweep)
    seeds: int = 3  # seeds of the runs that seeds and online-offline repeat; defaults' pipelines
    redraw: bool = False  # train nothing: draw every figure from <out>'s data (--out docs)
    extra: str = ""  # flags appended to every run, e.g. '--max-new-tokens 24'
    bon_prompts: int = 256  # held-out prompts for the sweep's best-of-n
    bon_max_n: int = 64  # largest n of the sweep's best-of-n (powers of two up to it)
    max_new_tokens: int = 40  # response length cap of the sweep's best-of-n samples
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


class Run(NamedTuple):
    script: str  # e.g. "rloo.py"
    label: str  # what the figures and logs call it
    flags: tuple  # its flags after --out, as strings
    root: str  # its --out


def as_run(script, label, flags, root):
    """A Run with its flags as strings."""
    return Run(script, label, tuple(map(str, flags)), root)


def key_of(script, flags, out):
    """The results key the script will give this run (results.run_key on its parsed flags)."""
    module = SCRIPTS[script]
    cfg = c.parse_config(module.Config, module.__doc__, getattr(module, "CHOICES", None),
                         argv=["--out", str(out), *map(str, flags)])
    algo = "preferred-ft" if script == "sft.py" else script[:-3]
    return c.run_key(algo, cfg, module.Config())["run"]


def finished(root):
    """The keys of the runs whose final point is in <root>/results.jsonl, once the points of
    every finished stage of this root are (a run stopped between its record and its points is
    finished here, not run again)."""
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not os.path.islink(os.path.join(root, name)):  # (a linked stage is its root's)
            publish(os.path.join(root, name))
    return {r["run"] for r in c.read_results(os.path.join(root, "results.jsonl")) if r.get("final")}


def failures(root):
    """{run key: its last line} of the runs that failed under root (<root>/failed.jsonl)."""
    return {r["run"]: r["error"] for r in c.read_jsonl(os.path.join(root, "failed.jsonl"))
            if isinstance(r.get("run"), str) and isinstance(r.get("error"), str)}


def command(r):
    """The command line of a run, as its stage record says it: script, --out, flags."""
    return [r.script, "--out", r.root, *r.flags]


def run_experiment(name, runs, minutes, out, after_run=None):
    """Run what is not yet in the results, saying first how long it will take (minutes: the
    measured minutes of all of `runs`, or None); after_run(run, key), if given, follows each run
    that is done (now or before). Returns the runs that failed (a failure does not stop the
    others)."""
    keys = {r: key_of(r.script, r.flags, r.root) for r in runs}
    done = {root: finished(root) | {k for k, e in failures(root).items()
                                    if any(d in e for d in DIVERGED)}
            for root in {r.root for r in runs}}
    todo = [r for r in runs if keys[r] not in done[r.root]]
    when = "not measured at these settings" if minutes is None else \
        f"≈ {minutes * len(todo) / len(runs):.0f} min on a 2-core bf16 CPU (fp32: ≈ 5× more)"
    print(f"{name}: {len(todo)} of {len(runs)} runs to do, {when}", flush=True)
    t0, failed = time.time(), []
    for r in runs:
        key = keys[r]
        if r in todo:
            log = os.path.join(out, "logs", name, r.label.replace(" ", "_") + ".log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            print(f"{r.label}: {' '.join(command(r))}  (log: {log})", flush=True)
            with open(log, "w") as f:
                code = c.run_child([sys.executable, os.path.join(ROOT, r.script), "--out",
                                    r.root, *r.flags], stdout=f, stderr=subprocess.STDOUT)
            if code != 0:  # a diverged run is a result too: its last line is kept
                with open(log) as f:
                    last = ([line.strip() for line in f if line.strip()] or ["?"])[-1]
                c.replace_rows(os.path.join(r.root, "failed.jsonl"), key,
                               [{"run": key, "experiment": name, "label": r.label,
                                 "error": last}])
                print(f"{r.label} failed: {last} (the experiment goes on)", flush=True)
                failed.append(f"{r.label} ({log})")
                continue
        done = key in finished(r.root)
        if r not in todo and done:
            print(f"{r.label}: already in {r.root}/results.jsonl, skipped")
        if after_run and done:
            after_run(r, key)
    print(f"{name}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
    return failed
