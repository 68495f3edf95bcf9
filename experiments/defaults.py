"""experiments/defaults.py: the README's defaults table. Every script at its defaults on three
pipelines that differ only in their seed: sft.py's, reward_model.py's and the method's together.

Pipeline seed s runs under <out>/pipeline<s> (seed 0: <out> itself, what `python ppo.py` built);
each RL script builds π_SFT and r_φ there with its own seed (stages.build_args). collect() writes
<out>/defaults.jsonl: every point of these runs (each row names its pipeline), each π_SFT's
held-out bits/byte and each reward model's accuracy against the gold order; table() gives mean ±
sd over the pipelines, and pipeline_rows() each pipeline's row of docs/pipelines.md.
"""
import os
from types import SimpleNamespace

import common as c
from experiments.loop import SCRIPTS as MODULES, as_run, key_of
from experiments.points import gold_at_kl, mean_sd
from lib.results import pipeline_of, write_jsonl

NAMES = ["defaults"]
SCRIPTS = ("ppo.py", "rloo.py", "grpo.py", "dpo.py")
# the floors the defaults keep (issue 44), each a mean over the pipelines
FLOORS = {"bits_per_byte": 1.78, "rm_acc_gold": 0.75, "ppo_gold": 0.90, "ppo_kl": 25.0}


def root(out, seed):
    """Where pipeline seed `seed` lives."""
    return out if seed == 0 else os.path.join(out, f"pipeline{seed}")


def runs(cfg, name="defaults"):
    """Each RL script at its defaults (but --seed), on each pipeline seed."""
    return [as_run(script, f"{script[:-3]} seed {seed}",
                   [*(["--seed", seed] if seed else []), *cfg.extra.split()], root(cfg.out, seed))
            for seed in range(cfg.seeds) for script in SCRIPTS]


def prepare(cfg, name, device):
    """π_SFT and r_φ of every pipeline seed before the runs (the first RL run would build them,
    with its seed, but then its time would include theirs)."""
    for seed in range(cfg.seeds):
        where = root(cfg.out, seed)
        args = c.build_args(SimpleNamespace(out=where, seed=seed))  # what an RL script passes
        sft_dir = os.path.join(where, "sft")
        c.require(sft_dir, "sft.py", args)
        c.require(os.path.join(where, "reward_model"), "reward_model.py", args,
                  built_from=[sft_dir])


def last_metric(path, name):
    """The last value of `name` in a metrics.jsonl (None if it has none)."""
    values = [r[name] for r in c.read_jsonl(path) if name in r]
    return values[-1] if values else None


def stale(stage_dir, script):
    """The settings of a finished run that differ from its script's defaults now (but --out,
    --seed and --precision), as "flag: then → now"; a results key leaves defaults out, so a run
    made before a default changed looks finished under the same key."""
    record = c.read_record(stage_dir) or {}
    now = vars(MODULES[script].Config())
    return [f"--{k.replace('_', '-')}: {v} → {now[k]}" for k, v in record.get("config", {}).items()
            if k in now and k not in ("out", "seed", "precision") and v != now[k]]


def collect(cfg):
    """<out>/defaults.jsonl: the points of every run of runs(), each π_SFT's row with its
    held-out bits/byte, and one row per reward model (its accuracy against the gold order).
    Stops with one line if a run was made at other defaults than today's."""
    rows = []
    made = [(r.root, r.script) for r in runs(cfg)] + [
        (root(cfg.out, s), script) for s in range(cfg.seeds)
        for script in ("sft.py", "reward_model.py")]
    for where, script in made:
        changed = stale(os.path.join(where, script[:-3]), script)
        if changed:
            c.die(f"{where}/{script[:-3]} was run at older defaults ({', '.join(changed)}):"
                  f" delete it and its rows of {where}/results.jsonl, then run again")
    for seed in range(cfg.seeds):
        where = root(cfg.out, seed)
        keys = {key_of(r.script, r.flags, r.root) for r in runs(cfg) if r.root == where}
        sft_key = "sft" + (f" seed={seed}" if seed else "")
        for r in c.read_results(os.path.join(where, "results.jsonl")):
            if r["run"] == sft_key:
                r = {**r, "bits_per_byte": last_metric(
                    os.path.join(where, "sft", "metrics.jsonl"), "val_bpb")}
            if r["run"] in keys or r["run"] == sft_key:
                rows.append({**r, "pipeline_seed": seed})
        report = c.read_json(os.path.join(where, "reward_model", "report.json"))
        record = c.read_record(os.path.join(where, "reward_model"))
        if report and record:
            rows.append({**report, "run": "reward-model" + (f" seed={seed}" if seed else ""),
                         "algo": "reward_model", "pipeline_seed": seed,
                         "pipeline": pipeline_of(record)})
    write_jsonl(os.path.join(cfg.out, "defaults.jsonl"), rows)


def finals(rows):
    """{algo: {pipeline seed: its final point}} (reward_model: its report row)."""
    out = {}
    for r in rows:
        if r.get("final") or r.get("algo") == "reward_model":
            out.setdefault(r["algo"], {})[r["pipeline_seed"]] = r
    return out


def _stat(values, digits):
    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _each(values):
    return " · ".join(f"{v:.3f}" for v in values)


def table(rows):
    """The README's two tables: each script's final gold, proxy and KL, mean ± sd over the
    pipelines with each pipeline's gold; then π_SFT's bits/byte and r_φ's accuracy."""
    f = finals(rows)
    seeds = sorted(f["sft"])
    lines = ["| command | gold, mean ± sd | proxy r_φ | KL (nats) | gold by pipeline |",
             "|---|---|---|---|---|"]
    for script, algo in [("sft", "sft"), ("ppo", "ppo"), ("rloo", "rloo"), ("grpo", "grpo"),
                         ("dpo", "dpo")]:
        pts = [f[algo][s] for s in seeds if s in f.get(algo, {})]
        if not pts:
            continue
        proxy = _stat([p["proxy"] for p in pts], 2) if algo != "sft" else "–"
        kl = _stat([p["kl"] for p in pts], 1) if algo != "sft" else "0"
        lines.append(f"| `python {script}.py` | {_stat([p['gold'] for p in pts], 3)} | {proxy} |"
                     f" {kl} | {_each([p['gold'] for p in pts])} |")
    sft, rm = [f["sft"][s] for s in seeds], [f["reward_model"][s] for s in seeds]
    lines += ["", "| stage | held-out figure | mean ± sd | by pipeline |", "|---|---|---|---|",
              f"| `python sft.py` | bits per byte on validation openings |"
              f" {_stat([p['bits_per_byte'] for p in sft], 3)} |"
              f" {_each([p['bits_per_byte'] for p in sft])} |",
              f"| `python reward_model.py` | pair accuracy against the gold order |"
              f" {_stat([p['val_acc_gold'] for p in rm], 3)} |"
              f" {_each([p['val_acc_gold'] for p in rm])} |"]
    return lines


def equal_kl_table(rows, kls=(2, 5)):
    """Each method at equal KL: its gold where each pipeline's run first reaches KL k
    (gold_at_kl, interpolated), mean ± sd over the pipelines, and each pipeline's."""
    lines = ["| command | " + " | ".join(f"gold at KL {k}: mean ± sd · by pipeline" for k in kls)
             + " |", "|---|" + "---|" * len(kls)]
    for algo in ("ppo", "rloo", "grpo", "dpo"):
        runs = {}
        for r in sorted((r for r in rows if r.get("algo") == algo and "step" in r),
                        key=lambda r: r["step"]):
            runs.setdefault(r["pipeline_seed"], []).append((r["kl"], r["gold"]))
        if not runs:
            continue
        cells = []
        for k in kls:
            at = [gold_at_kl(runs[s], k) for s in sorted(runs)]
            got = [g for g in at if g is not None]
            cells.append(("–" if len(got) < 2 else _stat(got, 3)) + " · "
                         + " · ".join("–" if g is None else f"{g:.3f}" for g in at))
        lines.append(f"| `python {algo}.py` | " + " | ".join(cells) + " |")
    return lines


def pipelines(rows):
    """The pipelines of the rows, in pipeline-seed order."""
    return [p for _, p in sorted({(r["pipeline_seed"], r["pipeline"]) for r in rows})]


def floors(rows):
    """{floor: ([each pipeline's value], their mean, the floor, whether the mean holds it)}:
    π_SFT's bits/byte, r_φ's accuracy against the gold order, PPO's final gold and final KL."""
    f = finals(rows)
    got = {"bits_per_byte": [p["bits_per_byte"] for _, p in sorted(f["sft"].items())],
           "rm_acc_gold": [p["val_acc_gold"] for _, p in sorted(f["reward_model"].items())],
           "ppo_gold": [p["gold"] for _, p in sorted(f["ppo"].items())],
           "ppo_kl": [p["kl"] for _, p in sorted(f["ppo"].items())]}
    out = {}
    for k, values in got.items():
        m = mean_sd(values)[0]
        out[k] = (values, m, FLOORS[k], m <= FLOORS[k] if k in ("bits_per_byte", "ppo_kl")
                  else m >= FLOORS[k])
    return out


def _command(record):
    """A stage's command without its --out (the row names the pipeline, not the folder)."""
    words = record["command"].split()
    return " ".join(w for i, w in enumerate(words)
                    if w != "--out" and (i == 0 or words[i - 1] != "--out"))


def pipeline_row(where):
    """<where>'s pipeline as a row of docs/pipelines.md: its id, the commands and held-out
    figures of π_SFT (bits/byte) and r_φ (accuracy against the gold order), and the commit,
    machine and precision they were made on (the reward model's where they differ)."""
    sft, rm = (c.read_record(os.path.join(where, s)) for s in ("sft", "reward_model"))
    if not sft or not rm:
        return None
    bpb = last_metric(os.path.join(where, "sft", "metrics.jsonl"), "val_bpb")
    acc = (c.read_json(os.path.join(where, "reward_model", "report.json")) or {}).get(
        "val_acc_gold")
    made = [" / ".join(dict.fromkeys(str((r.get("machine") or {}).get(k)) for r in (sft, rm)))
            for k in ("commit", "name", "precision")]
    return (f"| `{pipeline_of(sft)}` | `python {_command(sft)}`: {bpb or float('nan'):.3f} |"
            f" `python {_command(rm)}`: {acc or float('nan'):.3f} | {' | '.join(made)} |"
            f" {sft['finished'][:10]} |")


def finish(cfg, name, device):
    collect(cfg)
    for seed in range(cfg.seeds):
        print(pipeline_row(root(cfg.out, seed)))


def draw(out):
    """The two tables into <out>/defaults.md (from <out>/defaults.jsonl); False without data."""
    rows = c.read_jsonl(os.path.join(out, "defaults.jsonl"))
    if not rows:
        return False
    ids = ", ".join(f"`{p}`" for p in pipelines(rows))
    with open(os.path.join(out, "defaults.md"), "w") as f:
        f.write(f"Each script at its defaults on the pipelines {ids} (docs/pipelines.md), from"
                f" {out}/defaults.jsonl (`python -m experiments --experiment defaults`):\n\n"
                + "\n".join(table(rows)) + "\n\nThe same runs at equal KL: the gold where each"
                " pipeline's run first reaches KL 2 and 5 (interpolated between evaluations):\n\n"
                + "\n".join(equal_kl_table(rows)) + "\n")
    return True
