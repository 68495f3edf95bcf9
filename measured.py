"""measured.py: experiments.py's figures and tables, drawn from its data files alone.

<out>/measured.jsonl (the experiments' evaluation points), tax.jsonl (each run's final LM loss
on held-out IMDb text), grad_variance.jsonl (bench/grad_variance.py) and failed.jsonl (runs that
stopped) → loss_family.png, tax.png, iterative.png and measured.md (every table). Colours and
markers are figures.py's, one per method.
"""
import os

import matplotlib.pyplot as plt

import common as c
from figures import GOLD_LABEL, KL_LABEL, gold_at_kl, key, method, save, style

LOSS_NAMES = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "SLiC"}


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


def paths(rows):
    """{run key: its points in step order}."""
    out = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        out.setdefault(r["run"], []).append(r)
    return out


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
           title="over-optimisation with epochs")
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


def draw(out, names):
    """The figures and measured.md from <out>'s files; names: {experiment: [(run key, label)]}."""
    rows = c.read_results(os.path.join(out, "measured.jsonl"))
    tax = c.read_jsonl(os.path.join(out, "tax.jsonl"))
    variance = c.read_jsonl(os.path.join(out, "grad_variance.jsonl"))
    failed = {r["run"]: r["error"] for r in c.read_jsonl(os.path.join(out, "failed.jsonl"))}
    if not (rows or tax or variance):
        c.die(f"{out} has none of experiments.py's data (measured.jsonl, tax.jsonl,"
              " grad_variance.jsonl): run python experiments.py first")
    runs = paths(rows)
    md = ["# experiments.py's tables", "",
          f"From {out}/measured.jsonl, tax.jsonl and grad_variance.jsonl",
          "(`python experiments.py --out docs --redraw`).", ""]
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
