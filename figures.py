"""figures.py: frontier.py's figures and tables, drawn from the results files alone.

frontier.png, overoptimisation.png and frontier.md from <out>/results.jsonl; goodhart.png from
<out>/goodhart.jsonl; dpo_epochs.png, online_offline.png and seeds.png from the runs of those
experiments in results.jsonl, each once its points are there.
"""
import importlib, math, os

import matplotlib.pyplot as plt

import common as c

KL_LIMITS = (2, 5, 10, 20)


def upper_frontier(points):
    """The (KL, gold) points that no other point beats with the same or a smaller KL."""
    best, front = -math.inf, []
    for kl, gold in sorted(points, key=lambda p: (p[0], -p[1])):
        if gold > best:
            front.append((kl, gold))
            best = gold
    return front


def method(row):
    """A row's method, from its fields: algo and variant (ppo-rm, ppo-gt, dpo-sigmoid, …)."""
    return row["algo"] + (f"-{row['variant']}" if row.get("variant") else "")


def save_gold_vs_kl(fig, ax, png, title, xlabel="KL(π‖π_ref)  [nats per response]"):
    ax.set(xlabel=xlabel, ylabel="gold reward (VADER) on held-out prompts", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    c.save_figure(fig, png)


def draw_frontier(rows, png):
    """Gold reward against KL: every evaluation of every run, and each method's frontier."""
    methods = list(dict.fromkeys(method(r) for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n, m in enumerate(methods):
        pts = [(r["kl"], r["gold"]) for r in rows if method(r) == m]
        ax.scatter(*zip(*pts), s=14 if m != "sft" else 120, alpha=0.45, color=f"C{n % 10}",
                   marker="*" if m == "sft" else "o")
        ax.plot(*zip(*upper_frontier(pts)), color=f"C{n % 10}", label=m, lw=2)
    save_gold_vs_kl(fig, ax, png, "reward–KL frontier: every evaluation of every run",
                    "KL(π‖π_ref)  [nats per response]  (best-of-n: upper bound)")


def draw_overoptimisation(rows, png, panels=("ppo-rm", "rloo-rm", "grpo-rm")):
    """Proxy (solid) and gold (dashed) reward against √KL along each run of the RL methods."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True)
    for ax, m in zip(axes, panels):
        runs = dict.fromkeys(r["run"] for r in rows if method(r) == m)
        for n, run in enumerate(runs):
            pts = sorted((r["step"], math.sqrt(max(r["kl"], 0)), r["proxy"], r["gold"])
                         for r in rows if r["run"] == run)
            label = f"β={next(r.get('beta') for r in rows if r['run'] == run)}"
            x = [p[1] for p in pts]
            ax.plot(x, [p[2] for p in pts], "-", color=f"C{n % 10}", label=f"{label} proxy")
            ax.plot(x, [p[3] for p in pts], "--", color=f"C{n % 10}", label=f"{label} gold")
        ax.set(xlabel="√KL(π‖π_ref)", title=m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("reward (proxy r_φ solid, gold r* dashed)")
    c.save_figure(fig, png)


def best_gold_table(rows, path):
    """frontier.md: the best gold reward of each method below each KL limit."""
    lines = ["| method | " + " | ".join(f"KL ≤ {k}" for k in KL_LIMITS) + " |",
             "|---|" + "---|" * len(KL_LIMITS)]
    for m in dict.fromkeys(method(r) for r in rows):
        best = [max((r["gold"] for r in rows if method(r) == m and r["kl"] <= k), default=None)
                for k in KL_LIMITS]
        lines.append(f"| {m} | " + " | ".join("–" if b is None else f"{b:.3f}" for b in best)
                     + " |")
    with open(path, "w") as f:
        f.write("Best gold reward on held-out prompts below each KL (nats per response)\n\n"
                + "\n".join(lines) + "\n")
    print("\n".join(lines))


def gold_at_kl(points, kl):
    """A run's gold reward where its KL first reaches kl, linear between the two evaluations
    around it; points: (KL, gold) in step order. None if the run never gets there."""
    for (k0, g0), (k1, g1) in zip(points, points[1:]):
        if k0 <= kl <= k1:
            return g0 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return None


def mean_sd(values):
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5


def seed_groups(rows):
    """Runs that differ only in their seed, with two seeds or more: {label: [the rows of each
    seed's run, in step order]}."""
    groups = {}
    for r in rows:
        same = " ".join(f"{k}={v}" for k, v in sorted(r.get("settings", {}).items())
                        if k not in ("seed", "beta"))
        label = f"{method(r)} β={r.get('beta')} {same}".strip()
        groups.setdefault(label, {}).setdefault(r.get("seed", 0), []).append(r)
    return {label: [sorted(run, key=lambda r: r["step"]) for _, run in sorted(seeds.items())]
            for label, seeds in groups.items() if len(seeds) >= 2}


def seeds_table(groups, kls=(2, 5)):
    """Markdown lines: per group, final gold and KL and the gold where the KL reaches each of
    kls (interpolated, see gold_at_kl), mean ± sd over seeds."""
    def fmt(values):
        values = [v for v in values if v is not None]
        return "–" if len(values) < 2 else "{:.3f} ± {:.3f}".format(*mean_sd(values))
    lines = ["| runs (seeds) | final gold | final KL | "
             + " | ".join(f"gold at KL {kl}" for kl in kls) + " |",
             "|---|---|---|" + "---|" * len(kls)]
    for label, runs in groups.items():
        at = [fmt([gold_at_kl([(p["kl"], p["gold"]) for p in r], kl) for r in runs]) for kl in kls]
        lines.append(f"| {label} ({len(runs)}) | {fmt([r[-1]['gold'] for r in runs])} | "
                     f"{fmt([r[-1]['kl'] for r in runs])} | " + " | ".join(at) + " |")
    return lines


def draw_seeds(groups, png):
    """Every seed's gold-vs-KL path (thin), and the final point's mean ± sd over seeds."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n, (label, runs) in enumerate(groups.items()):
        for run in runs:
            ax.plot([p["kl"] for p in run], [p["gold"] for p in run], color=f"C{n % 10}",
                    lw=0.8, alpha=0.5)
        (kl, kl_sd), (gold, gold_sd) = (mean_sd([r[-1][k] for r in runs]) for k in ("kl", "gold"))
        ax.errorbar(kl, gold, gold_sd, kl_sd, fmt="o", color=f"C{n % 10}", capsize=3,
                    label=f"{label} ({len(runs)} seeds)")
    save_gold_vs_kl(fig, ax, png, "seeds: each run's path, and its end as mean ± sd over seeds")


def goodhart_runs(rows):
    """Each Goodhart run's points in step order, weakest proxy and largest β first."""
    runs = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    return sorted((sorted(run, key=lambda r: r["step"]) for run in runs.values()),
                  key=lambda run: (run[0]["proxy_pairs"], -run[0]["beta"]))


def goodhart_peaks(rows):
    """Per run: (proxy pairs, its accuracy vs the gold order, β, peak gold, its KL, final gold,
    final KL, final proxy)."""
    out = []
    for run in goodhart_runs(rows):
        peak = max(run, key=lambda r: r["gold"])
        out.append((run[0]["proxy_pairs"], run[0]["proxy_acc_gold"], run[0]["beta"], peak["gold"],
                    peak["kl"], run[-1]["gold"], run[-1]["kl"], run[-1]["proxy"]))
    return out


def draw_goodhart(rows, png):
    """Gold (left) and proxy (right) reward against √KL along each run, one colour per proxy."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colours = {p: f"C{n}" for n, p in enumerate(sorted({r["proxy_pairs"] for r in rows}))}
    for run, (pairs, acc, beta, peak, peak_kl, *_) in zip(goodhart_runs(rows),
                                                          goodhart_peaks(rows)):
        x = [math.sqrt(max(r["kl"], 0)) for r in run]
        style = "-" if beta == max(r["beta"] for r in rows) else ":"
        label = f"r_φ from {pairs // 1000}k pairs (acc vs gold {acc:.2f}), β={beta}"
        axes[0].plot(x, [r["gold"] for r in run], style, color=colours[pairs], label=label)
        axes[0].plot(math.sqrt(peak_kl), peak, "*", color=colours[pairs], ms=12)
        axes[1].plot(x, [r["proxy"] for r in run], style, color=colours[pairs], label=label)
    axes[0].set(ylabel="gold reward r* (VADER)", title="gold: ★ = its peak")
    axes[1].set(ylabel="proxy reward r_φ (the one optimised)", title="proxy")
    for ax in axes:
        ax.set_xlabel("√KL(π‖π_ref)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    c.save_figure(fig, png)


def draw_dpo_epochs(rows, png):
    """Gold reward and KL against epochs over a fixed preference set."""
    batch = importlib.import_module("dpo").Config().batch_size
    fig, ax = plt.subplots(figsize=(7, 4.2))
    kl_ax = ax.twinx()
    for n, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
        s = pts[0]["settings"]
        epochs = [p["step"] * s.get("batch_size", batch) / s["n_pairs"] for p in pts]
        label = f"β={pts[0]['beta']}, {s['n_pairs']} pairs"
        ax.plot(epochs, [p["gold"] for p in pts], "-o", ms=3, color=f"C{n}", label=label + " gold")
        kl_ax.plot(epochs, [p["kl"] for p in pts], "--", color=f"C{n}", label=label + " KL")
    ax.set(xlabel="epochs over the preference pairs", ylabel="gold reward (solid)",
           title="offline DPO trained for many epochs")
    kl_ax.set_ylabel("KL(π‖π_ref) (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    c.save_figure(fig, png)


def online_offline_runs(rows):
    """The rows of the online-vs-offline experiment: DPO online, judged by the labeler, and DPO
    from the file with the same other settings (steps and so as many labels)."""
    def rest(r):
        return tuple(sorted((k, v) for k, v in r.get("settings", {}).items()
                            if k not in ("beta", "seed", "online", "judge")))
    online = [r for r in rows if r["algo"] == "dpo" and r["variant"] == "sigmoid-online"
              and r["settings"].get("judge") == "labeler"]
    shapes = {rest(r) for r in online}
    return online + [r for r in rows if r["algo"] == "dpo" and r["variant"] == "sigmoid"
                     and rest(r) in shapes]


def draw_online_offline(rows, png):
    """Gold reward against KL of online and offline DPO on as many labels: every evaluation,
    a line per run (style by β), and each kind's frontier."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {b: st for b, st in zip(sorted({r["beta"] for r in rows}, reverse=True),
                                      ("-", "--", ":", "-."))}
    for n, variant in enumerate(("sigmoid", "sigmoid-online")):
        mine = [r for r in rows if r["variant"] == variant]
        for run in dict.fromkeys(r["run"] for r in mine):
            pts = sorted((r for r in mine if r["run"] == run), key=lambda r: r["step"])
            ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], styles[pts[0]["beta"]],
                    color=f"C{n}", lw=0.8, alpha=0.6)
        front = upper_frontier([(r["kl"], r["gold"]) for r in mine])
        ax.plot(*zip(*front), color=f"C{n}", lw=2.5,
                label=("online" if n else "offline") + " DPO: frontier")
    for b, st in styles.items():
        ax.plot([], [], st, color="gray", label=f"β={b}")
    save_gold_vs_kl(fig, ax, png, "online vs offline DPO, the same labeler and number of labels")


def draw(out):
    """The figures and frontier.md, from <out>/results.jsonl and <out>/goodhart.jsonl; each
    experiment's figure once its points are there."""
    rows = [r for r in c.read_jsonl(os.path.join(out, "results.jsonl"))
            if {"algo", "kl", "gold"} <= r.keys()]
    goodhart = [r for r in c.read_jsonl(os.path.join(out, "goodhart.jsonl")) if "kl" in r]
    if not rows and not goodhart:
        c.die(f"{out} has no evaluation points to draw (results.jsonl, goodhart.jsonl)")
    md = os.path.join(out, "frontier.md")
    sweep_rows = [r for r in rows if r.get("settings", {}).get("seed") is None
                  and "n_pairs" not in r.get("settings", {})]
    if sweep_rows:
        draw_frontier(sweep_rows, os.path.join(out, "frontier.png"))
        draw_overoptimisation(sweep_rows, os.path.join(out, "overoptimisation.png"))
        best_gold_table(sweep_rows, md)
    sections = []
    if goodhart:
        draw_goodhart(goodhart, os.path.join(out, "goodhart.png"))
        sections += ["Goodhart: long RLOO runs against proxies of three sizes", "",
                     "| proxy pairs | acc vs gold order | β | peak gold | at KL | final gold |"
                     " final KL | final proxy |", "|---|---|---|---|---|---|---|---|"]
        sections += ["| {} | {:.3f} | {} | {:.3f} | {:.1f} | {:.3f} | {:.1f} | {:.2f} |".format(*p)
                     for p in goodhart_peaks(goodhart)] + [""]
    epochs = [r for r in rows if r["algo"] == "dpo" and "n_pairs" in r.get("settings", {})]
    if epochs:
        draw_dpo_epochs(epochs, os.path.join(out, "dpo_epochs.png"))
    both = online_offline_runs(rows)
    if {r["variant"] for r in both} == {"sigmoid", "sigmoid-online"}:
        draw_online_offline(both, os.path.join(out, "online_offline.png"))
    groups = seed_groups(rows)
    if groups:
        draw_seeds(groups, os.path.join(out, "seeds.png"))
        sections += ["Seeds: the spread of runs that differ only in their seed", "",
                     *seeds_table(groups), ""]
    if sections:
        with open(md, "a" if sweep_rows else "w") as f:
            f.write("\n" + "\n".join(sections))
        print("\n".join(sections))
