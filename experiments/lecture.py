"""experiments/lecture.py: the measurements the lecture's claims asked for
(docs/lecture_measured.md), with their tables and figures. All RL runs at β = 0.1 unless said;
quick settings only (--quick changes nothing here). Runs shared by two experiments (same flags)
run once. After each run the LM loss of its final policy on held-out IMDb text (the alignment
tax, ppo.py's measurement) goes into <out>/tax.jsonl.
  variance     bench/grad_variance.py (the gradient's variance of REINFORCE without a baseline,
               with the batch mean, leave-one-out, and PPO's critic/GAE, at π_SFT), then gold
               per sample: rloo.py --baseline none|mean|loo for 50 steps and PPO for 20 steps,
               compared at 1280 responses (RLOO's 20th step)
  loss-family  dpo.py --loss sigmoid|ipo|hinge at β 0.1 and 0.03 (150 steps, 4800 pairs), each
               at β 0.03 for 8 epochs over 256 pairs (gold against epochs)
  tax          RLOO at β 0.02 and GRPO at β 0.1 and 0.02 (50 steps) beside every run above, and
               PPO-ptx (--ptx-coef 1, 20 steps) beside PPO without it
  iterative    DPO at equal labels (4800, the same labeler, τ 0.1): offline from the file,
               --rounds 3 (3 × 1600 pairs from the policy of the round), online
  sensitivity  PPO (20 steps) at lr 3e-5 and 3e-4 × clip 0.1 and 0.4, and its defaults (lr 1e-4,
               clip 0.2) with seeds 0 and 1; RLOO (50 steps) at lr 3e-5, 1e-4 and 3e-4
Then <out>/measured.jsonl (the experiments' rows and sft.py's point), the figures
loss_family.png, tax.png and iterative.png, and measured.md (every table).
Run: python -m experiments --experiment lecture   (the five; 36.5 min on a 2-core AMX-BF16
                                                   Xeon, bf16, once out/sft and out/reward_model
                                                   exist)
"""
import os, sys

import matplotlib.pyplot as plt

import common as c
import ppo
from experiments.loop import ROOT, as_run, command, failures, key_of
from experiments.points import gold_at_kl, paths, said_pipelines
from lib.results import write_jsonl
from lib.plots import GOLD_LABEL, KL_LABEL, key, method, save, style

NAMES = ["variance", "loss-family", "tax", "iterative", "sensitivity"]  # this file's experiments
LOSS_NAMES = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "SLiC"}
ESTIMATORS = ["reinforce", "mean", "loo", "ppo-gae"]  # bench/grad_variance.py's rows
PPO = ["--beta", 0.1, "--eval-every", 5]  # PPO passes KL 10 within its first 10 iterations
# the learning rates of the design (the scripts' defaults when it was committed and run, before
# 2026-12-07): pinned, so that a later default neither moves the experiment nor renames its runs
RLOO_LR, GRPO_LR, DPO_LR = ["--lr", 3e-5], ["--lr", 3e-5], ["--lr", 1e-4]
LABELER = ["--judge", "labeler"]  # the labeler that labelled the preference file


def experiment_runs(name):
    """(script, label, flags) of every run of an experiment."""
    if name == "variance":
        return [("rloo.py", f"REINFORCE, baseline {b}", ["--beta", 0.1, "--steps", 50, *RLOO_LR]
                 + (["--baseline", b] if b != "loo" else [])) for b in ("none", "mean", "loo")] \
            + [("ppo.py", "PPO, 20 iterations", ["--steps", 20, *PPO])]
    if name == "loss-family":
        return [("dpo.py", f"{loss} β={b}", ["--loss", loss, "--beta", b, "--steps", 150,
                                              *DPO_LR])
                for loss in ("sigmoid", "ipo", "hinge") for b in (0.1, 0.03)] \
            + [("dpo.py", f"{loss} β=0.03, 8 epochs of 256 pairs",
                ["--loss", loss, "--beta", 0.03, "--n-pairs", 256, "--steps", 64,
                 "--eval-every", 8, *DPO_LR]) for loss in ("sigmoid", "ipo", "hinge")]
    if name == "tax":
        return [("rloo.py", "RLOO β=0.02", ["--beta", 0.02, "--steps", 50, *RLOO_LR])] \
            + [("grpo.py", f"GRPO β={b}", ["--beta", b, "--steps", 50, *GRPO_LR])
               for b in (0.1, 0.02)] \
            + [("ppo.py", f"PPO{' -ptx' if ptx else ''} 20 iterations",
                ["--steps", 20, *PPO, *(["--ptx-coef", 1] if ptx else [])]) for ptx in (0, 1)]
    if name == "iterative":
        return [("dpo.py", label, ["--beta", 0.1, "--steps", 150, *DPO_LR, *flags])
                for label, flags in
                (("offline", []), ("3 rounds", ["--rounds", 3, *LABELER]),
                 ("online", ["--online", *LABELER]))]
    cells = [(1e-4, 0.2, 0), (1e-4, 0.2, 1)] + [(lr, clip, 0) for lr in (3e-5, 3e-4)
                                                for clip in (0.1, 0.4)]
    return [("ppo.py", f"PPO lr={lr} clip={clip} seed={s}",
             ["--steps", 20, *PPO, "--lr", lr, "--clip", clip, *(["--seed", s] if s else [])])
            for lr, clip, s in cells] \
        + [("rloo.py", f"RLOO lr={lr}", ["--beta", 0.1, "--steps", 50, "--lr", lr])
           for lr in (3e-5, 1e-4, 3e-4)]


def runs(cfg, name):
    """The Runs of an experiment, under cfg.out."""
    return [as_run(script, label, [*flags, *cfg.extra.split()], cfg.out)
            for script, label, flags in experiment_runs(name)]


def prepare(cfg, name, device):
    """Before the runs: sft.py's point in the results (a root whose sft is a link has none: it
    is copied, tagged as published) and its tax; for variance, bench/grad_variance.py unless all
    its rows are there."""
    results, sft_dir = os.path.join(cfg.out, "results.jsonl"), os.path.join(cfg.out, "sft")
    if not any(r["algo"] == "sft" for r in c.read_results(results)):
        record = c.read_record(sft_dir) or {}
        tag = {"record": record.get("id"), "inputs": record.get("inputs", {})}
        for row in c.read_results(os.path.join(sft_dir, "points.jsonl")):
            c.replace_rows(results, row["run"], [{**row, **tag}])
    if "sft" not in {r.get("algo") for r in c.read_jsonl(os.path.join(cfg.out, "tax.jsonl"))}:
        measure_tax(cfg.out, "sft.py", None, device)
    done = {r.get("estimator") for r in c.read_jsonl(os.path.join(cfg.out, "grad_variance.jsonl"))}
    if name == "variance" and not set(ESTIMATORS) <= done:  # (an interrupted one: measured again)
        if c.run_child([sys.executable, os.path.join(ROOT, "bench", "grad_variance.py"),
                        "--out", cfg.out]) != 0:
            c.die("bench/grad_variance.py failed; run it alone to see why")


def after_run(cfg, device):
    """after_run(run, key) of the loop: the tax of each run whose final policy is still in its
    stage, unless measured."""
    taxed = {r["run"] for r in c.read_jsonl(os.path.join(cfg.out, "tax.jsonl"))}

    def measure(r, key):
        if key not in taxed and r.script != "sft.py" and as_left(r):
            measure_tax(cfg.out, r.script, key, device)
            taxed.add(key)
    return measure


def finish(cfg, name, device):
    """After the runs: <out>/measured.jsonl."""
    collect(cfg.out)


def measure_tax(out, script, key, device):
    """The alignment tax of a run's final policy (out/<stage> as the run left it): its LM loss on
    ppo.py's held-out IMDb windows, with the run's final KL and gold, into <out>/tax.jsonl;
    key None: out/sft, under its own run's key."""
    stage = os.path.join(out, "sft" if script == "sft.py" else script[:-3])
    model = c.load_model(stage).to(device).eval()
    enc = c.tokenizer(model.config.bpe_ranks)
    tokens = ppo.lm_batch(enc, "valid", range(ppo.N_TAX_TEXTS), ppo.LM_TOKENS, device)
    final = [r for r in c.read_results(os.path.join(out, "results.jsonl")) if r.get("final")
             and (r["run"] == key if key else r["algo"] == "sft")][-1]
    row = {k: final.get(k) for k in ("run", "algo", "variant", "beta", "settings", "kl", "gold",
                                     "kl_se", "gold_se", "pipeline")}
    row["lm_loss"] = ppo.alignment_tax(model, tokens, device)
    c.replace_rows(os.path.join(out, "tax.jsonl"), row["run"], [row])
    print(f"{row['run']}: LM loss on held-out IMDb text {row['lm_loss']:.3f} at KL {row['kl']:.2f}")


def as_left(r):
    """Whether the run's stage still holds its final policy (its record names the command)."""
    record = c.read_record(os.path.join(r.root, r.script[:-3])) or {}
    return record.get("command") == " ".join(command(r))


def collect(out):
    """<out>/measured.jsonl: the rows of every experiment's runs (and sft.py's point), from
    <out>/results.jsonl, so that docs/ keeps them apart from the β sweep's."""
    keys = {key_of(s, f, out) for name in NAMES
            for s, _, f in experiment_runs(name)}
    rows = [r for r in c.read_results(os.path.join(out, "results.jsonl"))
            if r["run"] in keys or r.get("algo") == "sft"]
    write_jsonl(os.path.join(out, "measured.jsonl"), rows)


def labels(out):
    """{experiment: [(run key, label)]} (a run two experiments share is in both)."""
    return {name: [(key_of(s, f, out), label)
                   for s, label, f in experiment_runs(name)] for name in NAMES}


# ---------------------------------------------------------------- tables and figures


def variance_table(rows):
    """Markdown lines: bench/grad_variance.py's rows, one per estimator."""
    lines = ["| estimator | samples a batch | batches | tr Σ | tr Σ of each half | ‖μ‖² |"
             " tr Σ/‖μ‖² |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["noise_to_signal"]
        lines.append(f"| {r['estimator']} | {r['samples']} | {r['batches']} | {r['trace']:.4g} |"
                     f" {r['trace_halves'][0]:.4g}, {r['trace_halves'][1]:.4g} |"
                     f" {r['signal']:.4g} | {'–' if ratio is None else f'{ratio:.3g}'} |")
    return lines


def runs_table(runs, names, failed, kls=(2, 5), step=None):
    """Markdown lines: per run (key, label) its final gold ± se and KL, and its gold where its
    KL first reaches each of kls (interpolated; – if it never does); a run that stopped: why.
    step: the same at that step (its points up to it), to compare runs at equal samples."""
    head = " | ".join(f"gold at KL {k}" for k in kls)
    at_what = "final" if step is None else f"step {step}:"
    lines = [f"| run | key in measured.jsonl | {at_what} gold | {at_what} KL | {head} |",
             "|---|---|---|---|" + "---|" * len(kls)]
    for run, label in names:
        if run in failed:
            lines.append(f"| {label} | {run} | stopped: {failed[run]} |" + " |" * (1 + len(kls)))
        elif run in runs:
            pts = [p for p in runs[run] if step is None or p["step"] <= step]
            last = pts[-1]
            at = [gold_at_kl([(p["kl"], p["gold"]) for p in pts], k) for k in kls]
            lines.append(f"| {label} | {run} | {last['gold']:.3f} ± {last['gold_se']:.3f} |"
                         f" {last['kl']:.2f} | " + " | ".join("–" if g is None else f"{g:.3f}"
                                                               for g in at) + " |")
    return lines


def draw_loss_family(runs, names, png):
    """Left: gold against KL of DPO, IPO and SLiC at each β (150 steps of fresh pairs); right:
    gold against epochs over 256 pairs, the same three at β 0.03."""
    fig, (ax, ep) = plt.subplots(1, 2, figsize=(11, 4.5))
    handles, epoch_pairs = [], 0
    for run, label in names:
        if run not in runs:
            continue
        pts = runs[run]
        m = method(pts[0])
        colour, marker = style(m)
        n_pairs = pts[0]["settings"].get("n_pairs")
        if n_pairs:
            epoch_pairs = n_pairs
            epochs = [p["step"] * 32 / n_pairs for p in pts]
            ep.errorbar(epochs, [p["gold"] for p in pts], [p["gold_se"] for p in pts],
                        marker=marker, ms=4, color=colour, capsize=2)
            continue
        ls = "-" if pts[0]["beta"] == 0.1 else "--"
        ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], ls, marker=marker, ms=4,
                color=colour)
        handles.append(key(m, ls=ls, ms=4, label=f"{LOSS_NAMES[pts[0]['variant']]}"
                           f" β={pts[0]['beta']}"))
    ax.set(xlabel=KL_LABEL, ylabel=GOLD_LABEL, title="the loss family f(βh) on one plane")
    ep.set(xlabel=f"epochs over {epoch_pairs} pairs (β = 0.03)", ylabel=GOLD_LABEL + " ± se",
           title="gold against epochs over the same pairs")
    for a in (ax, ep):
        a.grid(alpha=0.3)
    save(fig, png, handles, ncol=3)


def draw_tax(tax, runs, png):
    """LM loss on held-out IMDb text against KL: each run's final policy (one marker per
    method; PPO-ptx hollow), PPO's runs along their evaluations (faint), π_SFT as a star."""
    fig, ax = plt.subplots(figsize=(8, 5))
    seen = {}
    for pts in runs.values():  # PPO logs the LM loss at every evaluation
        if pts[0]["algo"] == "ppo" and all("lm_loss" in p for p in pts):
            ptx = pts[0]["settings"].get("ptx_coef")
            ax.plot([p["kl"] for p in pts], [p["lm_loss"] for p in pts], ":" if ptx else "-",
                    color=style("ppo-rm")[0], lw=0.8, alpha=0.4)
    for r in tax:
        m = method(r)
        ptx = (r.get("settings") or {}).get("ptx_coef")
        colour, marker = style(m)
        ax.plot(r["kl"], r["lm_loss"], marker, color=colour, ms=11 if m == "sft" else 7,
                mfc="none" if ptx else colour)
        seen.setdefault(m + (" (ptx)" if ptx else ""), key(m, ls="", mfc="none" if ptx else colour,
                                                           label=m + (", ptx 1" if ptx else "")))
    ax.set(xlabel=KL_LABEL, ylabel="LM loss on held-out IMDb text [nats/token]",
           title="the alignment tax: each run's final policy")
    ax.grid(alpha=0.3)
    save(fig, png, list(seen.values()), ncol=4)


def draw_iterative(runs, names, png):
    """Gold against KL of offline, iterative (rounds) and online DPO on as many labels."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"offline": style("dpo-sigmoid"), "3 rounds": ("darkred", "s"),
               "online": style("dpo-sigmoid-online")}
    for run, label in names:
        if run in runs:
            colour, marker = colours[label]
            pts = runs[run]
            ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], "-", marker=marker, ms=4,
                    color=colour, label=f"DPO {label}")
    ax.set(xlabel=KL_LABEL, ylabel=GOLD_LABEL,
           title="offline, iterative and online DPO: 4800 labels each, β = 0.1")
    ax.grid(alpha=0.3)
    save(fig, png, ax.get_legend_handles_labels()[0], ncol=3)


def draw(out):
    """The figures and measured.md from <out>'s files. Returns whether there was anything to
    draw."""
    names = labels(out)
    rows = c.read_results(os.path.join(out, "measured.jsonl"))
    tax = c.read_jsonl(os.path.join(out, "tax.jsonl"),
                       c.has("run", "algo", "kl", "gold", "lm_loss"))
    variance = c.read_jsonl(os.path.join(out, "grad_variance.jsonl"), c.has(
        "estimator", "samples", "batches", "trace", "trace_halves", "signal", "noise_to_signal"))
    failed = failures(out)
    if not (rows or tax or variance):
        return False
    runs = paths(rows)
    md = ["# The lecture experiments' tables", "",
          f"From {out}/measured.jsonl, tax.jsonl and grad_variance.jsonl,"
          f" {said_pipelines(rows + tax + variance)}",
          "(`python -m experiments --out docs --redraw`).", ""]
    if variance:
        md += ["## Variance of the policy gradient at π_SFT", "", *variance_table(variance), ""]
    for name, title, step in (
            ("variance", "Gold per sample: 1280 responses each (PPO's 20 iterations of 64,"
             " RLOO's first 20 of 16 × 4)", 20), ("loss-family", "The loss family", None),
            ("iterative", "Iterative DPO", None),
            ("sensitivity", "PPO's and RLOO's sensitivity", None), ("tax", "The tax runs", None)):
        if any(k in runs or k in failed for k, _ in names.get(name, [])):
            md += [f"## {title}", "", *runs_table(runs, names[name], failed, step=step), ""]
    if tax:
        md += ["## The alignment tax: LM loss of each final policy", "",
               "| run | KL | gold | LM loss [nats/token] |", "|---|---|---|---|"]
        md += [f"| {r['run']} | {r['kl']:.2f} | {r['gold']:.3f} | {r['lm_loss']:.3f} |"
               for r in sorted(tax, key=lambda r: (r["algo"] != "sft", r["algo"], r["kl"]))]
        draw_tax(tax, runs, os.path.join(out, "tax.png"))
    if any(k in runs for k, _ in names.get("loss-family", [])):
        draw_loss_family(runs, names["loss-family"], os.path.join(out, "loss_family.png"))
    if any(k in runs for k, _ in names.get("iterative", [])):
        draw_iterative(runs, names["iterative"], os.path.join(out, "iterative.png"))
    with open(os.path.join(out, "measured.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return True
