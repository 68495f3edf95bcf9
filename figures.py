"""figures.py: frontier.py's figures and tables, drawn from the results files alone.

frontier.png, overoptimisation.png and frontier.md from the β sweep's runs in <out>/results.jsonl
(those of `python frontier.py --quick` or of `python frontier.py`, whichever the file holds);
goodhart.py's figures from <out>/goodhart.jsonl and best_of_n.jsonl; dpo_epochs.png,
online_offline.png and seeds.png from the runs of those experiments in results.jsonl, each once
its points are there. Every figure gives each method one colour and one marker (STYLE) and puts
its legend off the data.
"""
import importlib, math, os

import matplotlib.colors
import matplotlib.pyplot as plt

import common as c

KL_LIMITS = (2, 5, 10, 20)
STYLE = {  # method → (colour, marker), the same in every figure
    "sft": ("black", "*"), "ppo-rm": ("tab:blue", "o"), "ppo-gt": ("tab:cyan", "v"),
    "rloo-rm": ("tab:green", "s"), "grpo-rm": ("tab:orange", "D"),
    "dpo-sigmoid": ("tab:red", "^"), "dpo-sigmoid-online": ("tab:pink", "P"),
    "dpo-ipo": ("tab:brown", "X"), "dpo-hinge": ("tab:olive", "h"),
    "preferred-ft": ("tab:purple", "p"), "best-of-n": ("tab:gray", "x")}
KL_LABEL = "KL(π‖π_ref)  [nats per response]"
GOLD_LABEL = "gold reward r* (VADER), held-out"


def style(m):
    return STYLE.get(m, ("tab:gray", "."))


def lighter(colour, t):
    """A method's colour mixed with white by 0.6·t (t in [0, 1]): its runs told apart."""
    return tuple(v + (1 - v) * 0.6 * t for v in matplotlib.colors.to_rgb(colour))


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


def save(fig, png, handles=None, ncol=4):
    """Save with the legend below the panels, off the data."""
    fig.tight_layout()
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                   fontsize=8, frameon=False)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def key(m, **kw):
    """A legend entry in a method's colour and marker."""
    colour, marker = style(m)
    return plt.Line2D([], [], color=colour, marker=marker, **{"label": m, **kw})


def draw_frontier(rows, png):
    """Gold reward against KL, KL 0–10 (where the methods differ) beside the full range: each
    method's upper frontier bold, its runs' paths faint, single points as large markers."""
    methods = list(dict.fromkeys(method(r) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    handles = []
    for m in methods:
        colour, marker = style(m)
        mine = [r for r in rows if method(r) == m]
        runs = dict.fromkeys(r["run"] for r in mine)
        pts = [(r["kl"], r["gold"]) for r in mine]
        for ax in axes:
            if len(pts) == 1:  # sft, Preferred-FT: one point
                ax.plot(*pts[0], marker, color=colour, ms=14 if marker == "*" else 10,
                        mec="black", zorder=5)
                continue
            for run in runs:
                path = sorted((r["step"], r["kl"], r["gold"]) for r in mine if r["run"] == run)
                ax.plot([p[1] for p in path], [p[2] for p in path], "-", marker=marker, ms=3,
                        color=colour, lw=0.7, alpha=0.3)
            ax.plot(*zip(*upper_frontier(pts)), "--" if m == "best-of-n" else "-",
                    marker=marker, ms=5, color=colour, lw=2.4, zorder=4)
        label = m + (" (KL: the bound log n − (n−1)/n)" if m == "best-of-n" else "")
        handles.append(key(m, lw=2.4, ms=8 if len(pts) == 1 else 5, label=label,
                           ls="none" if len(pts) == 1 else "--" if m == "best-of-n" else "-"))
    axes[0].set_xlim(-0.3, 10)
    axes[0].set(title="KL 0–10: where the methods differ", ylabel=GOLD_LABEL)
    axes[1].set(title="the full range (runs faint, each method's upper frontier bold)")
    for ax in axes:
        ax.set_xlabel(KL_LABEL)
        ax.grid(alpha=0.3)
    save(fig, png, handles, ncol=5)


def draw_overoptimisation(rows, png, panels=("ppo-rm", "rloo-rm", "grpo-rm")):
    """Proxy (top row) and gold (bottom row) reward against √KL along each run of the RL
    methods, on their own axes: the proxy's scale (r_φ, up to ≈ 4) is not the gold's."""
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 6.4), sharex="col",
                             sharey="row")
    handles = []
    for col, m in enumerate(panels):
        colour, marker = style(m)
        betas = {r["run"]: r.get("beta") or 0 for r in rows if method(r) == m}
        runs = sorted(betas, key=lambda run: -betas[run])  # largest β darkest
        for n, run in enumerate(runs):
            pts = sorted((r["step"], math.sqrt(max(r["kl"], 0)), r["proxy"], r["gold"])
                         for r in rows if r["run"] == run)
            beta = betas[run]
            ls, tint = ("-", "--", ":", "-.")[n % 4], lighter(colour, n / max(len(runs) - 1, 1))
            x = [p[1] for p in pts]
            axes[0, col].plot(x, [p[2] for p in pts], ls, marker=marker, ms=3, color=tint)
            axes[1, col].plot(x, [p[3] for p in pts], ls, marker=marker, ms=3, color=tint)
            handles.append(plt.Line2D([], [], ls=ls, marker=marker, ms=3, color=tint,
                                      label=f"{m} β={beta}"))
        axes[0, col].set_title(m)
        axes[1, col].set_xlabel("√KL(π‖π_ref)")
    axes[0, 0].set_ylabel("proxy r_φ (the reward optimised)")
    axes[1, 0].set_ylabel(GOLD_LABEL)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    save(fig, png, handles, ncol=len(handles) // 2 or 1)


def best_gold_table(rows, path, source="results.jsonl"):
    """frontier.md: the best gold reward of each method below each KL limit; source: the command
    and file the rows come from, said on the table's first line."""
    lines = ["| method | " + " | ".join(f"KL ≤ {k}" for k in KL_LIMITS) + " |",
             "|---|" + "---|" * len(KL_LIMITS)]
    for m in dict.fromkeys(method(r) for r in rows):
        best = [max((r["gold"] for r in rows if method(r) == m and r["kl"] <= k), default=None)
                for k in KL_LIMITS]
        lines.append(f"| {m} | " + " | ".join("–" if b is None else f"{b:.3f}" for b in best)
                     + " |")
    with open(path, "w") as f:
        f.write(f"Best gold reward on held-out prompts below each KL (nats per response), {source}"
                "\n\n" + "\n".join(lines) + "\n")
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


def draw_seeds(groups, png, kls=(2, 5)):
    """Left: each seed's gold-vs-KL path (faint) and its end (marker). Right: the methods
    compared at equal KL: gold where each seed's run reaches KL 2 and 5, mean ± sd over seeds."""
    fig, (ax, eq) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    handles = []
    for n, (label, runs) in enumerate(groups.items()):
        colour, marker = style(method(runs[0][0]))
        for run in runs:
            ax.plot([p["kl"] for p in run], [p["gold"] for p in run], color=colour, lw=0.8,
                    alpha=0.35)
            ax.plot(run[-1]["kl"], run[-1]["gold"], marker, color=colour, ms=7, mec="black")
        for i, kl in enumerate(kls):
            at = [g for g in (gold_at_kl([(p["kl"], p["gold"]) for p in r], kl) for r in runs)
                  if g is not None]
            if len(at) >= 2:
                mean, sd = mean_sd(at)
                eq.errorbar(i + 0.12 * (n - (len(groups) - 1) / 2), mean, sd, fmt=marker,
                            color=colour, capsize=4, ms=7)
        handles.append(key(method(runs[0][0]), ls="none", ms=7,
                           label=f"{label} ({len(runs)} seeds)"))
    ax.set(xlabel=KL_LABEL, ylabel=GOLD_LABEL,
           title="each seed's path; its end point (marker)")
    eq.set_xticks(range(len(kls)), [f"at KL {kl}" for kl in kls])
    eq.set(ylabel="gold reward where the run first reaches that KL",
           title="at equal KL: mean ± sd over seeds")
    for a in (ax, eq):
        a.grid(alpha=0.3)
    save(fig, png, handles, ncol=2)


def draw_dpo_epochs(rows, png):
    """Gold reward (± its standard error) and KL against epochs over a fixed preference set,
    on two panels."""
    batch = importlib.import_module("dpo").Config().batch_size
    colour, marker = style("dpo-sigmoid")
    fig, (ax, kl_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    handles = []
    for n, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
        s = pts[0]["settings"]
        epochs = [p["step"] * s.get("batch_size", batch) / s["n_pairs"] for p in pts]
        ls = ("-", "--", ":")[n % 3]
        ax.errorbar(epochs, [p["gold"] for p in pts], [p.get("gold_se") or 0 for p in pts],
                    fmt=ls, marker=marker, ms=4, color=colour, capsize=2)
        kl_ax.plot(epochs, [p["kl"] for p in pts], ls, marker=marker, ms=4, color=colour)
        handles.append(key("dpo-sigmoid", ls=ls, ms=4,
                           label=f"DPO β={pts[0]['beta']}, {s['n_pairs']} pairs"))
    ax.set(ylabel=GOLD_LABEL + " ± se", title="offline DPO trained for many epochs")
    kl_ax.set(xlabel="epochs over the preference pairs", ylabel="KL(π‖π_ref) (log scale)",
              yscale="log")
    for a in (ax, kl_ax):
        a.grid(alpha=0.3)
    save(fig, png, handles, ncol=2)


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
    """Gold reward against KL of online and offline DPO on as many labels: each run's path
    (line style by β) and its end point (marker); where a β has several seeds, their end as
    mean ± sd in both gold and KL; each kind's upper frontier bold."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    betas = sorted({r["beta"] for r in rows}, reverse=True)
    styles = dict(zip(betas, ("-", "--", ":", "-.")))
    handles = []
    for variant in ("sigmoid", "sigmoid-online"):
        colour, marker = style(f"dpo-{variant}")
        mine = [r for r in rows if r["variant"] == variant]
        ends = {}
        for run in dict.fromkeys(r["run"] for r in mine):
            pts = sorted((r for r in mine if r["run"] == run), key=lambda r: r["step"])
            ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], styles[pts[0]["beta"]],
                    color=colour, lw=0.8, alpha=0.5)
            ax.plot(pts[-1]["kl"], pts[-1]["gold"], marker, color=colour, ms=6, alpha=0.6)
            ends.setdefault(pts[0]["beta"], []).append(pts[-1])
        for beta, last in ends.items():
            if len(last) >= 2:
                (kl, kl_sd), (gold, gold_sd) = (mean_sd([p[k] for p in last])
                                                for k in ("kl", "gold"))
                ax.errorbar(kl, gold, gold_sd, kl_sd, fmt=marker, color=colour, ms=10,
                            mec="black", capsize=4, zorder=5)
        front = upper_frontier([(r["kl"], r["gold"]) for r in mine])
        ax.plot(*zip(*front), color=colour, lw=2.5)
        name = "online" if variant.endswith("online") else "offline"
        handles.append(key(f"dpo-{variant}", lw=2.5, label=f"{name} DPO: frontier; markers:"
                           " each run's end; large: mean ± sd over seeds"))
    handles += [plt.Line2D([], [], ls=st, color="gray", label=f"β={b}")
                for b, st in styles.items()]
    ax.set(xlabel=KL_LABEL, ylabel=GOLD_LABEL,
           title="online vs offline DPO, the same labeler and number of labels")
    ax.grid(alpha=0.3)
    save(fig, png, handles, ncol=2)


def sweep_runs(rows, out):
    """The β sweep's rows and where they come from: the runs of `python frontier.py --quick` or
    of `python frontier.py`, whichever has more of its runs in the file, with sft.py's point and
    best-of-n; in a file with neither, every run but the experiments' (seeds, n_pairs)."""
    frontier = importlib.import_module("frontier")
    have, best = {r["run"] for r in rows}, None
    for quick in (True, False):
        keys = {frontier.key_of(script, flags, out) for script, _, flags in frontier.sweep(quick)}
        if keys & have and (best is None or len(keys & have) > len(best[1] & have)):
            best = (quick, keys)
    if best is None:
        return [r for r in rows if r.get("settings", {}).get("seed") is None
                and "n_pairs" not in r.get("settings", {})], "every run but the experiments'"
    quick, keys = best
    missing = len(keys - have)
    source = (f"from the runs of `python frontier.py{' --quick' if quick else ''}` in"
              " results.jsonl" + (f" ({missing} of its {len(keys)} runs missing)" if missing
                                  else "") + ("" if "sft" in have else "; no sft.py point here"))
    return [r for r in rows if r["run"] in keys | {"sft", "best-of-n"}], source


def draw(out):
    """The figures and frontier.md, from <out>/results.jsonl and <out>/goodhart.jsonl; each
    experiment's figure once its points are there."""
    rows = [r for r in c.read_results(os.path.join(out, "results.jsonl"))
            if {"algo", "kl", "gold"} <= r.keys()]
    goodhart = c.read_results(os.path.join(out, "goodhart.jsonl"))  # bad rows: skipped, said
    if not rows and not goodhart:
        c.die(f"{out} has no evaluation points to draw (results.jsonl, goodhart.jsonl)")
    md = os.path.join(out, "frontier.md")
    sweep_rows, source = sweep_runs(rows, out)
    if sweep_rows:
        draw_frontier(sweep_rows, os.path.join(out, "frontier.png"))
        draw_overoptimisation(sweep_rows, os.path.join(out, "overoptimisation.png"))
        best_gold_table(sweep_rows, md, source)
    sections = []
    if goodhart:  # its figures and goodhart_data.md (imported here: goodhart imports figures)
        importlib.import_module("goodhart").draw(out)
    epochs = [r for r in rows if r["algo"] == "dpo" and "n_pairs" in r.get("settings", {})]
    if epochs:
        draw_dpo_epochs(epochs, os.path.join(out, "dpo_epochs.png"))
    both = online_offline_runs(rows)
    if {r["variant"] for r in both} == {"sigmoid", "sigmoid-online"}:
        draw_online_offline(both, os.path.join(out, "online_offline.png"))
    groups = seed_groups(rows)
    if groups:
        draw_seeds(groups, os.path.join(out, "seeds.png"))
        sections += ["Seeds: the spread of runs that differ only in their seed, from results.jsonl"
                     " (`python frontier.py --quick --experiment seeds` and `… online-offline`)",
                     "",
                     *seeds_table(groups), ""]
    if sections:
        with open(md, "a" if sweep_rows else "w") as f:
            f.write("\n" + "\n".join(sections))
        print("\n".join(sections))
