"""lib/plots.py: every figure's style and the plots of a run (common.py re-exports it).

One colour and marker per method (STYLE) in every figure, the run's metrics against step, and the
reward–KL plane of every run in the results file.
"""
import math, os

import matplotlib
matplotlib.use("Agg")  # files only, no screen
import matplotlib.colors
import matplotlib.pyplot as plt

from lib.results import read_jsonl
from lib.stages import writing_dir


def save_figure(fig, png):
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_metrics(out_dir, keys, png="metrics.png"):
    """One panel per metric (or per group of metrics given as a tuple) against step."""
    out_dir = writing_dir(out_dir)  # this run's log, and its plot beside it
    rows = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, group in zip(axes[0], keys):
        for key in (group if isinstance(group, tuple) else (group,)):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    save_figure(fig, os.path.join(out_dir, png))


def plot_scatter(x, y, xlabel, ylabel, png, title=""):
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(x, y, s=8, alpha=0.5)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, png)


KL_LABEL = "KL(π‖π_ref)  [nats per response]"
GOLD_LABEL = "gold reward r* (VADER), held-out"
STYLE = {  # method → (colour, marker), the same in every figure
    "sft": ("black", "*"), "ppo-rm": ("tab:blue", "o"), "ppo-gt": ("tab:cyan", "v"),
    "rloo-rm": ("tab:green", "s"), "grpo-rm": ("tab:orange", "D"),
    "dpo-sigmoid": ("tab:red", "^"), "dpo-sigmoid-online": ("tab:pink", "P"),
    "dpo-ipo": ("tab:brown", "X"), "dpo-hinge": ("tab:olive", "h"),
    "preferred-ft": ("tab:purple", "p"), "best-of-n": ("tab:gray", "x")}
BOUND = "best-of-n"  # the method whose KL is a bound (log n − (n−1)/n), not a measurement


def style(m):
    return STYLE.get(m, ("tab:gray", "."))


def method(row):
    """A row's method, from its fields: algo and variant (ppo-rm, ppo-gt, dpo-sigmoid, …)."""
    return row.get("algo", "?") + (f"-{row['variant']}" if row.get("variant") else "")


def lighter(colour, t):
    """A method's colour mixed with white by 0.6·t (t in [0, 1]): its runs told apart."""
    return tuple(v + (1 - v) * 0.6 * t for v in matplotlib.colors.to_rgb(colour))


def key(m, **kw):
    """A legend entry in a method's colour and marker."""
    colour, marker = style(m)
    return plt.Line2D([], [], color=colour, marker=marker, **{"label": m, **kw})


def save(fig, png, handles=None, ncol=4):
    """Save with the legend below the panels, off the data."""
    fig.tight_layout()
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                   fontsize=8, frameon=False)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def upper_frontier(points):
    """The (KL, gold) points that no other point beats with the same or a smaller KL."""
    best, front = -math.inf, []
    for kl, gold in sorted(points, key=lambda p: (p[0], -p[1])):
        if gold > best:
            front.append((kl, gold))
            best = gold
    return front


def plot_frontier(rows, png):
    """Gold reward against KL, KL 0–10 (where the methods differ) beside the full range: each
    method's upper frontier bold, its runs' paths faint, single points as large markers. The one
    reward–KL plotter: each run's reward_vs_kl.png and the experiments' frontier figures.
    Best-of-n's KL is a bound, not a measurement: drawn hollow and dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    handles = []
    for m in dict.fromkeys(method(r) for r in rows):
        colour, marker = style(m)
        bound = {"ls": "--", "mfc": "none"} if m == BOUND else {"ls": "-"}
        mine = [r for r in rows if method(r) == m]
        pts = [(r["kl"], r["gold"]) for r in mine]
        for ax in axes:
            if len(pts) == 1:  # sft, Preferred-FT: one point
                ax.plot(*pts[0], marker, color=colour, ms=14 if marker == "*" else 10,
                        mec="black", zorder=5)
                continue
            for run in dict.fromkeys(r["run"] for r in mine):
                path = sorted((r["step"], r["kl"], r["gold"]) for r in mine if r["run"] == run)
                ax.plot([p[1] for p in path], [p[2] for p in path], marker=marker, ms=3,
                        color=colour, lw=0.7, alpha=0.3, **bound)
            ax.plot(*zip(*upper_frontier(pts)), marker=marker, ms=6, color=colour, lw=2.4,
                    zorder=4, **bound)
        label = m + (": KL is the bound log n − (n−1)/n, not measured" if m == BOUND else "")
        handles.append(key(m, lw=2.4, ms=8 if len(pts) == 1 else 5, label=label,
                           **({"ls": "none"} if len(pts) == 1 else bound)))
    axes[0].set_xlim(-0.3, 10)
    axes[0].set(title="KL 0–10: where the methods differ", ylabel=GOLD_LABEL)
    axes[1].set(title="the full range (runs faint, each method's upper frontier bold)")
    for ax in axes:
        ax.set_xlabel(KL_LABEL)
        ax.grid(alpha=0.3)
    save(fig, png, handles, ncol=3)
