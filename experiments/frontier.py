"""experiments/frontier.py: every method on one reward–KL plane (the DPO paper's Fig. 2), and
the experiments around it, with their figures and tables (drawn from the results files alone).

frontier (the β sweep): each method over a small β sweep: PPO, RLOO and GRPO against the learned
reward r_φ, PPO against the gold reward itself (PPO-GT; not an upper bound: see docs/results.md),
DPO, Preferred-FT (sft.py --preferred: SFT on the chosen responses), and best-of-n from π_SFT
(n = 1, 2, 4, …, 64: the sample with the best r_φ among n; its KL is the bound
log n − (n−1)/n, not a measurement). Figures: frontier.png (gold vs KL, each method's
frontier), proxy_and_gold.png (proxy and gold vs √KL along each RL run), frontier.md (best gold
below KL 2, 5, 10, 20). The full sweep (without --quick) names them frontier_full.png, … .
dpo-epochs      offline DPO at a small β for 16 epochs over 2048 pairs → dpo_epochs.png
online-offline  offline DPO against online DPO judged by the same labeler, on as many labels
                → online_offline.png
seeds           the sweep's first run of PPO, RLOO, GRPO and DPO with seeds 0, 1, 2 → seeds.png
                and a table in frontier.md (online-offline's seeds too)
Every run writes its model to the same out/<method>/ directory: only the points are kept.
"""
import math, os

import matplotlib.pyplot as plt
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import dpo
from experiments.loop import as_run, key_of
from experiments.points import gold_at_kl, mean_sd, said_pipelines
from lib.plots import (GOLD_LABEL, KL_LABEL, key, lighter, method, plot_frontier, save, style,
                       upper_frontier)

NAMES = ["frontier", "dpo-epochs", "online-offline", "seeds"]  # the experiments of this file
KL_LIMITS = (2, 5, 10, 20)
SWEEP_STEPS = {True: (50, 100, 300), False: (100, 200, 500)}  # --quick or not: the steps of
# PPO; of RLOO and GRPO; of DPO and Preferred-FT
DPO_EPOCHS = ["--beta", 0.03, "--n-pairs", 2048, "--steps", 1024, "--eval-every", 64]  # 16 epochs
ONLINE_BETAS = (0.1, 0.03, 0.3)  # online vs offline DPO: the β sweep (seeds at the first)
ONLINE = ["--online", "--judge", "labeler"]  # judged by the labeler that labelled the file


def sweep(quick):
    """(script, label, flags) of every run of the β sweep: each method's KL from 0 to beyond 10
    nats; PPO-GT's β about 5× below PPO-RM's, since VADER's range is that much smaller than
    r_φ's, so that both cover the same KL."""
    steps = SWEEP_STEPS[quick]
    if quick:
        ppo, gt, rloo, grpo, dpo = [0.1, 0.02], [0.02, 0.004], [0.1, 0.02], [0.1, 0.02], \
            [0.1, 0.03]
    else:
        # GRPO's KL runs away at small β over 200 iterations (β = 0.02 passed KL 100 at 165)
        ppo, gt, rloo, grpo, dpo = [0.3, 0.1, 0.05, 0.02, 0.01], [0.05, 0.02, 0.01, 0.004], \
            [0.3, 0.1, 0.05, 0.02, 0.01], [0.3, 0.2, 0.1, 0.05], [0.3, 0.1, 0.03, 0.01]
    dense = ["--eval-every", 5]  # PPO passes KL 10 within its first 10 iterations
    return ([("ppo.py", f"ppo-rm β={b}", ["--steps", steps[0], "--beta", b, *dense]) for b in ppo]
            + [("ppo.py", f"ppo-gt β={b}", ["--steps", steps[0], "--beta", b, "--reward", "gold",
                                            *dense]) for b in gt]
            + [("rloo.py", f"rloo-rm β={b}", ["--steps", steps[1], "--beta", b]) for b in rloo]
            + [("grpo.py", f"grpo-rm β={b}", ["--steps", steps[1], "--beta", b]) for b in grpo]
            + [("dpo.py", f"dpo-sigmoid β={b}", ["--steps", steps[2], "--beta", b]) for b in dpo]
            + [("sft.py", "preferred-ft", ["--steps", steps[2], "--preferred", "--lr", 3e-4,
                                           "--warmup", 20, "--optimizer", "adamw"])])


def runs(cfg, name):
    """The Runs of an experiment (cfg: experiments' Config)."""
    extra = cfg.extra.split()
    if name == "frontier":
        todo = sweep(cfg.quick)
    elif name == "dpo-epochs":
        todo = [("dpo.py", "dpo β=0.03, 16 epochs of 2048 pairs", DPO_EPOCHS)]
    elif name == "online-offline":  # equal labels: steps · batch_size pairs, online or from file
        steps = SWEEP_STEPS[cfg.quick][2]
        todo = [("dpo.py", f"dpo {mode} β={b} seed={s}",
                 ["--steps", steps, "--beta", b, *flags, *(["--seed", s] if s else [])])
                for b in ONLINE_BETAS for mode, flags in (("offline", []), ("online", ONLINE))
                for s in range(cfg.seeds if b == ONLINE_BETAS[0] else 1)]
    else:  # seeds: the first run of each RL method and of DPO in the sweep, seeds 0 … seeds − 1
        firsts = {}
        for script, label, flags in sweep(cfg.quick):
            firsts.setdefault(label.split()[0], (script, label, flags))
        todo = [(script, f"{label} seed={s}", [*flags, *(["--seed", s] if s else [])])
                for s in range(cfg.seeds) for m, (script, label, flags) in firsts.items()
                if m in ("ppo-rm", "rloo-rm", "grpo-rm", "dpo-sigmoid")]
    return [as_run(script, label, [*flags, *extra], cfg.out) for script, label, flags in todo]


def finish(cfg, name, device):
    """After the sweep's runs: best-of-n from π_SFT, unless its points are there."""
    if name == "frontier" and "best-of-n" not in {
            r["run"] for r in c.read_results(os.path.join(cfg.out, "results.jsonl"))
            if r.get("final")}:
        run_best_of_n(cfg, os.path.join(cfg.out, "results.jsonl"), device)


def best_of_n(gold, proxy, ns):
    """gold, proxy: (prompts, N). For each n: mean gold of the sample with the highest proxy
    among the first n of each prompt, and the KL bound log n − (n−1)/n (Stiennon et al.
    2020)."""
    rows = []
    for n in ns:
        pick = proxy[:, :n].argmax(1, keepdim=True)
        rows.append((n, gold[:, :n].gather(1, pick).mean().item(), math.log(n) - (n - 1) / n))
    return rows


def run_best_of_n(cfg, results, device):
    sft = c.load_model(os.path.join(cfg.out, "sft")).to(device).eval()
    rm = c.load_model(os.path.join(cfg.out, "reward_model"), GPT2ForSequenceClassification)
    rm.to(device).eval()
    enc = c.tokenizer(sft.config.bpe_ranks)
    prompt_ids = [p for p in c.prompts("eval", enc, cfg.bon_prompts) for _ in range(cfg.bon_max_n)]
    gold, proxy = [], []
    with torch.no_grad(), c.autocast(device):
        for tokens, _ in c.sample_batched(sft, prompt_ids, cfg.max_new_tokens, 256):
            proxy.append(c.reward(rm, tokens).cpu())
            gold.append(c.gold_reward([c.decode(enc, t) for t in tokens.tolist()]))
    gold, proxy = (torch.cat(x).view(cfg.bon_prompts, -1) for x in (gold, proxy))
    ns = [2 ** i for i in range(int(math.log2(cfg.bon_max_n)) + 1)]
    rows = best_of_n(gold, proxy, ns)
    c.start_stage(os.path.join(cfg.out, "best_of_n"))  # its own stage: a rerun replaces it whole
    points = c.Results(results, os.path.join(cfg.out, "best_of_n"),
                       {"run": "best-of-n", "algo": "best-of-n", "variant": "", "beta": None,
                        "seed": cfg.seed, "steps": cfg.bon_max_n, "settings": {}})
    for (n, g, kl), p in zip(rows, best_of_n(proxy, proxy, ns)):
        points.add({"kl": kl, "kl_is_bound": True, "gold": g, "proxy": p[1]}, n,
                   final=n == ns[-1], n=n)
        print(f"best-of-{n}: gold {g:.3f}, KL ≤ {kl:.2f}")
    c.finish_run(os.path.join(cfg.out, "best_of_n"), cfg, [os.path.join(cfg.out, s) for s in
                                                           ("sft", "reward_model")], points)


# ---------------------------------------------------------------- figures and tables


def draw_proxy_and_gold(rows, png, panels=("ppo-rm", "rloo-rm", "grpo-rm")):
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
    fig.suptitle("the proxy r_φ (top) and the gold reward (bottom) along each RL run of the"
                 " β sweep, against √KL")
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
        f.write(f"Best gold reward on held-out prompts below each KL (nats per response), {source};"
                f" {said_pipelines(rows)}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


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
    batch = dpo.Config().batch_size
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
    """The β sweep's rows, whether it is the full sweep, and where they come from: the runs of the
    sweep with --quick or without, whichever has more of its runs in the file, with sft.py's point
    and best-of-n; in a file with neither, every run but the experiments' (seeds, n_pairs)."""
    have, best = {r["run"] for r in rows}, None
    for quick in (True, False):
        keys = {key_of(script, flags, out) for script, _, flags in sweep(quick)}
        if keys & have and (best is None or len(keys & have) > len(best[1] & have)):
            best = (quick, keys)
    if best is None:
        return [r for r in rows if r.get("settings", {}).get("seed") is None
                and "n_pairs" not in r.get("settings", {})], False, \
            "every run but the experiments'"
    quick, keys = best
    missing = len(keys - have)
    source = (f"from the runs of `python -m experiments{' --quick' if quick else ''}` in"
              " results.jsonl" + (f" ({missing} of its {len(keys)} runs missing)" if missing
                                  else "") + ("" if "sft" in have else "; no sft.py point here"))
    return [r for r in rows if r["run"] in keys | {"sft", "best-of-n"}], not quick, source


def draw(out):
    """The figures and frontier.md (frontier_full.md for the full sweep), from
    <out>/results.jsonl; each experiment's figure once its points are there. Returns whether
    there was anything to draw."""
    rows = [r for r in c.read_results(os.path.join(out, "results.jsonl"))
            if {"algo", "kl", "gold"} <= r.keys()]
    if not rows:
        return False
    sweep_rows, full, source = sweep_runs(rows, out)
    name = "_full" if full else ""
    md = os.path.join(out, f"frontier{name}.md")
    if sweep_rows:
        plot_frontier(sweep_rows, os.path.join(out, f"frontier{name}.png"))
        draw_proxy_and_gold(sweep_rows, os.path.join(out, f"proxy_and_gold{name}.png"))
        best_gold_table(sweep_rows, md, source)
    sections = []
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
                     " (`python -m experiments --quick --experiment seeds` and `… online-offline`)",
                     "", *seeds_table(groups), ""]
    if sections:
        with open(md, "a" if sweep_rows else "w") as f:
            f.write("\n" + "\n".join(sections))
        print("\n".join(sections))
    return True
