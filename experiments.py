"""experiments.py: the measurements the lecture's claims asked for (docs/lecture_measured.md).

Each --experiment is a list of runs of the scripts with their own flags, run as frontier.py runs
its experiments (a run whose final point is already in <out>/results.jsonl is skipped, so an
interrupted experiment resumes; a run that fails does not stop the others and is recorded in
<out>/failed.jsonl). After each run the LM loss of its final policy on held-out IMDb text (the
alignment tax, ppo.py's measurement) goes into <out>/tax.jsonl. Runs shared by two experiments
(same flags) run once. All RL runs at β = 0.1 unless said; quick settings only.
  variance     bench/grad_variance.py (the gradient's variance of REINFORCE without a baseline,
               with the batch mean, leave-one-out, and PPO's critic/GAE, at π_SFT), then gold
               per sample: rloo.py --baseline none|mean|loo for 50 steps and PPO for 20 steps,
               compared at 1280 responses (RLOO's 20th step)
  loss-family  dpo.py --loss sigmoid|ipo|hinge at β 0.1 and 0.03 (150 steps, 4800 pairs), each
               at β 0.03 for 8 epochs over 256 pairs (over-optimisation with epochs)
  tax          RLOO at β 0.02 and GRPO at β 0.1 and 0.02 (50 steps) beside every run above, and
               PPO-ptx (--ptx-coef 1, 20 steps) beside PPO without it
  iterative    DPO at equal labels (4800, the same labeler, τ 0.1): offline from the file,
               --rounds 3 (3 × 1600 pairs from the policy of the round), online
  sensitivity  PPO (20 steps) at lr 3e-5 and 3e-4 × clip 0.1 and 0.4, and its defaults (lr 1e-4,
               clip 0.2) with seeds 0 and 1; RLOO (50 steps) at lr 3e-5, 1e-4 and 3e-4
Then <out>/measured.jsonl (the experiments' rows and sft.py's point), the figures
loss_family.png, tax.png and iterative.png, and measured.md (every table) are written.
Run: python experiments.py --experiment all   (36.5 min on a 2-core AMX-BF16 Xeon, bf16, once
                                              out/sft and out/reward_model exist)
     python experiments.py --out docs --redraw  (the figures and tables from docs/*.jsonl)
"""
import importlib, json, os, subprocess, sys, time
from dataclasses import dataclass

import common as c
import frontier
import measured

EXPERIMENTS = ["variance", "loss-family", "tax", "iterative", "sensitivity"]
CHOICES = {"experiment": [*EXPERIMENTS, "all"]}
# minutes of each experiment's own runs (those no earlier experiment has; variance: with its
# measurement) in `--experiment all`, from out/sft and out/reward_model on a 2-core Intel Xeon
# with AMX-BF16, bf16: 36.5 min in all (docs/lecture_measured.md)
MINUTES = {"variance": 5.8, "loss-family": 12.5, "tax": 5.3, "iterative": 4.1, "sensitivity": 8.7}
PPO = ["--beta", 0.1, "--eval-every", 5]  # PPO passes KL 10 within its first 10 iterations
LABELER = ["--judge", "labeler"]  # the labeler that labelled the preference file


@dataclass
class Config:
    out: str = "out"  # root directory: reads and extends out/results.jsonl
    experiment: str = "all"  # variance, loss-family, tax, iterative, sensitivity, or all
    redraw: bool = False  # train nothing: draw from <out>/measured.jsonl (--out docs)
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def experiment_runs(name):
    """(script, label, flags) of every run of an experiment."""
    if name == "variance":
        return [("rloo.py", f"REINFORCE, baseline {b}", ["--beta", 0.1, "--steps", 50]
                 + (["--baseline", b] if b != "loo" else [])) for b in ("none", "mean", "loo")] \
            + [("ppo.py", "PPO, 20 iterations", ["--steps", 20, *PPO])]
    if name == "loss-family":
        return [("dpo.py", f"{loss} β={b}", ["--loss", loss, "--beta", b, "--steps", 150])
                for loss in ("sigmoid", "ipo", "hinge") for b in (0.1, 0.03)] \
            + [("dpo.py", f"{loss} β=0.03, 8 epochs of 256 pairs",
                ["--loss", loss, "--beta", 0.03, "--n-pairs", 256, "--steps", 64,
                 "--eval-every", 8]) for loss in ("sigmoid", "ipo", "hinge")]
    if name == "tax":
        return [("rloo.py", "RLOO β=0.02", ["--beta", 0.02, "--steps", 50])] \
            + [("grpo.py", f"GRPO β={b}", ["--beta", b, "--steps", 50]) for b in (0.1, 0.02)] \
            + [("ppo.py", f"PPO{' -ptx' if ptx else ''} 20 iterations",
                ["--steps", 20, *PPO, *(["--ptx-coef", 1] if ptx else [])]) for ptx in (0, 1)]
    if name == "iterative":
        return [("dpo.py", label, ["--beta", 0.1, "--steps", 150, *flags]) for label, flags in
                (("offline", []), ("3 rounds", ["--rounds", 3, *LABELER]),
                 ("online", ["--online", *LABELER]))]
    cells = [(1e-4, 0.2, 0), (1e-4, 0.2, 1)] + [(lr, clip, 0) for lr in (3e-5, 3e-4)
                                                for clip in (0.1, 0.4)]
    return [("ppo.py", f"PPO lr={lr} clip={clip} seed={s}",
             ["--steps", 20, *PPO, "--lr", lr, "--clip", clip, *(["--seed", s] if s else [])])
            for lr, clip, s in cells] \
        + [("rloo.py", f"RLOO lr={lr}", ["--beta", 0.1, "--steps", 50, "--lr", lr])
           for lr in (3e-5, 1e-4, 3e-4)]


def command(script, flags, out):
    return [script, "--out", out, *map(str, flags)]


def measure_tax(out, script, key, device):
    """The alignment tax of a run's final policy (out/<stage> as the run left it): its LM loss on
    ppo.py's held-out IMDb windows, with the run's final KL and gold, into <out>/tax.jsonl;
    key None: out/sft, under its own run's key."""
    ppo = importlib.import_module("ppo")
    stage = os.path.join(out, "sft" if script == "sft.py" else script[:-3])
    model = c.load_model(stage).to(device).eval()
    enc = c.tokenizer(model.config.bpe_ranks)
    tokens = ppo.lm_batch(enc, "valid", range(ppo.N_TAX_TEXTS), ppo.LM_TOKENS, device)
    final = [r for r in c.read_results(os.path.join(out, "results.jsonl")) if r.get("final")
             and (r["run"] == key if key else r["algo"] == "sft")][-1]
    row = {k: final.get(k) for k in ("run", "algo", "variant", "beta", "settings", "kl", "gold",
                                     "kl_se", "gold_se")}
    row["lm_loss"] = ppo.alignment_tax(model, tokens, device)
    c.replace_rows(os.path.join(out, "tax.jsonl"), row["run"], [row])
    print(f"{row['run']}: LM loss on held-out IMDb text {row['lm_loss']:.3f} at KL {row['kl']:.2f}")


def as_left(out, script, flags):
    """Whether out/<stage> still holds this run's final policy (its record names the command)."""
    record = c.runs.read_record(os.path.join(out, script[:-3])) or {}
    return record.get("command") == " ".join(command(script, flags, out))


def run_experiment(cfg, name, device):
    """Run what is not yet in the results, saying first how long it will take; measure each
    finished run's tax. Returns the runs that failed."""
    runs = [(script, label, [*map(str, flags)]) for script, label, flags in experiment_runs(name)]
    keys = {label: frontier.key_of(script, flags, cfg.out) for script, label, flags in runs}
    diverged = {r["run"] for r in c.read_jsonl(os.path.join(cfg.out, "failed.jsonl"))
                if "exploded" in r["error"] or "non-finite" in r["error"]}  # results, not retried
    todo = [r for r in runs if keys[r[1]] not in frontier.finished(cfg.out) | diverged]
    earlier = {k for e in EXPERIMENTS[:EXPERIMENTS.index(name)] for k, _ in labels(cfg.out)[e]}
    minutes = MINUTES[name] * len(todo) / len(set(keys.values()) - earlier)  # per own run
    print(f"{name}: {len(todo)} of {len(runs)} runs to do, ≈ {minutes:.0f} min on a 2-core bf16"
          " CPU (fp32: ≈ 5× more)", flush=True)
    here, failed, t0 = os.path.dirname(os.path.abspath(__file__)), [], time.time()
    if name == "variance" and not os.path.exists(os.path.join(cfg.out, "grad_variance.jsonl")):
        if c.run_child([sys.executable, os.path.join(here, "bench", "grad_variance.py"),
                        "--out", cfg.out]) != 0:
            failed.append("bench/grad_variance.py")
    taxed = {r["run"] for r in c.read_jsonl(os.path.join(cfg.out, "tax.jsonl"))}
    for script, label, flags in runs:
        key = keys[label]
        if (script, label, flags) in todo:
            log = os.path.join(cfg.out, "frontier_logs", key.replace(" ", "_") + ".log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            print(f"{name}, {label}: {' '.join(command(script, flags, cfg.out))}  (log: {log})",
                  flush=True)
            with open(log, "w") as f:
                code = c.run_child([sys.executable, os.path.join(here, script), "--out", cfg.out,
                                    *flags], stdout=f, stderr=subprocess.STDOUT)
            if code != 0:  # a diverged run is a result too: its last line is kept
                with open(log) as f:
                    last = ([line.strip() for line in f if line.strip()] or ["?"])[-1]
                c.replace_rows(os.path.join(cfg.out, "failed.jsonl"), key,
                               [{"run": key, "experiment": name, "error": last}])
                print(f"{label} failed: {last} (the experiment goes on)", flush=True)
                failed.append(f"{label} ({log})")
                continue
        if key not in taxed and script != "sft.py" and as_left(cfg.out, script, flags):
            measure_tax(cfg.out, script, key, device)
            taxed.add(key)
    print(f"{name}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
    return failed


def collect(out):
    """<out>/measured.jsonl: the rows of every experiment's runs (and sft.py's point), from
    <out>/results.jsonl, so that docs/ keeps them apart from the β sweep's."""
    keys = {frontier.key_of(s, [*map(str, f)], out) for name in EXPERIMENTS
            for s, _, f in experiment_runs(name)}
    rows = [r for r in c.read_results(os.path.join(out, "results.jsonl"))
            if r["run"] in keys or r["algo"] == "sft"]
    with open(os.path.join(out, "measured.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def labels(out):
    """{experiment: [(run key, label)]} (a run two experiments share is in both)."""
    return {name: [(frontier.key_of(s, [*map(str, f)], out), label)
                   for s, label, f in experiment_runs(name)] for name in EXPERIMENTS}


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES)
    device = c.setup(cfg.seed, cfg.precision)
    if not cfg.redraw:
        sft_dir = os.path.join(cfg.out, "sft")
        c.require(sft_dir, "sft.py", ["--out", cfg.out])
        c.require(os.path.join(cfg.out, "reward_model"), "reward_model.py", ["--out", cfg.out],
                  built_from=[sft_dir])
        results = os.path.join(cfg.out, "results.jsonl")
        if not any(r["algo"] == "sft" for r in c.read_results(results)):  # a root beside out/
            for row in c.read_results(os.path.join(sft_dir, "points.jsonl")):  # (linked sft)
                c.replace_rows(results, row["run"], [row])
        if "sft" not in {r.get("algo") for r in c.read_jsonl(os.path.join(cfg.out, "tax.jsonl"))}:
            measure_tax(cfg.out, "sft.py", None, device)
        failed = [run for name in (EXPERIMENTS if cfg.experiment == "all" else [cfg.experiment])
                  for run in run_experiment(cfg, name, device)]
        collect(cfg.out)
    measured.draw(cfg.out, labels(cfg.out))
    if not cfg.redraw and failed:
        c.die(f"{len(failed)} run(s) failed: {'; '.join(failed)}; the same command retries them")


if __name__ == "__main__":
    c.run(main)
