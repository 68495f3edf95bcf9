"""frontier.py: every method on one reward–KL plane (the DPO paper's Fig. 2), and Goodhart.

Runs each method over a small β sweep, as subprocesses of the scripts with their own flags:
PPO, RLOO and GRPO against the learned reward r_φ, PPO against the gold reward itself (PPO-GT, the
upper reference), DPO, Preferred-FT (sft.py --preferred: SFT on the chosen responses), and
best-of-n from π_SFT (n = 1, 2, 4, …, 64: the sample with the best r_φ among n; its KL is the
bound log n − (n−1)/n, not a measurement). A run whose final point (same key: method and
every non-default setting) is already in out/results.jsonl is skipped, so an interrupted sweep
resumes. Then it draws, from that file:
  frontier.png            gold reward vs KL, every evaluation of every run, each method's frontier
  overoptimisation.png    proxy and gold reward vs √KL along the PPO, RLOO, GRPO runs (Goodhart)
  frontier.md             the best gold reward of each method below KL = 2, 5, 10, 20 nats
Every run writes its model to the same out/<method>/ directory: only the points are kept.
Run: python frontier.py --quick      (18 min on a 2-core CPU once out/sft and the RM exist)
     python frontier.py              (the full sweep, ≈ 60 min estimated)
     python frontier.py --out docs --redraw    (the README's figures, from docs/results.jsonl)
"""
import importlib, math, os, subprocess, sys
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from transformers import GPT2ForSequenceClassification

import common as c

KL_LIMITS = (2, 5, 10, 20)


@dataclass
class Config:
    out: str = "out"  # root directory: reads and extends out/results.jsonl
    quick: bool = False  # a smaller sweep (≈ 20 min on a 2-core CPU)
    redraw: bool = False  # train nothing: draw the figures from <out>/results.jsonl (--out docs)
    extra: str = ""  # flags appended to every run, e.g. '--max-new-tokens 24'
    bon_prompts: int = 256  # held-out prompts for best-of-n
    bon_max_n: int = 64  # largest n of best-of-n (powers of two up to it)
    max_new_tokens: int = 48  # response length cap of best-of-n samples
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def sweep(quick):
    """(script, label, flags) of every run of the sweep."""
    if quick:
        ppo, gt, rloo, grpo, dpo = [0.1, 0.02], [0.05], [0.1, 0.02], [0.1, 0.02], [0.3, 0.1]
        steps = (60, 100, 300)
    else:
        ppo, gt, rloo, grpo, dpo = [0.3, 0.1, 0.05, 0.02, 0.01], [0.1, 0.03], \
            [0.3, 0.1, 0.05, 0.02, 0.01], [0.3, 0.1, 0.05, 0.02, 0.01], [1.0, 0.3, 0.1, 0.03]
        steps = (100, 200, 500)
    dense = ["--eval-every", 5]  # PPO passes KL 10 within its first 10 iterations
    return ([("ppo.py", f"ppo-rm β={b}", ["--steps", steps[0], "--beta", b, *dense]) for b in ppo]
            + [("ppo.py", f"ppo-gt β={b}", ["--steps", steps[0], "--beta", b, "--reward", "gold",
                                            *dense]) for b in gt]
            + [("rloo.py", f"rloo-rm β={b}", ["--steps", steps[1], "--beta", b]) for b in rloo]
            + [("grpo.py", f"grpo-rm β={b}", ["--steps", steps[1], "--beta", b]) for b in grpo]
            + [("dpo.py", f"dpo-sigmoid β={b}", ["--steps", steps[2], "--beta", b]) for b in dpo]
            + [("sft.py", "preferred-ft", ["--steps", steps[2], "--preferred", "--lr", 3e-4,
                                           "--warmup", 20])])


def key_of(script, flags, out):
    """The results key the script will give this run (runs.run_key on its parsed flags)."""
    module = importlib.import_module(script[:-3])
    cfg = c.parse_config(module.Config, module.__doc__, getattr(module, "CHOICES", None),
                         argv=["--out", out, *map(str, flags)])
    algo = "preferred-ft" if script == "sft.py" else script[:-3]
    return c.run_key(algo, cfg, module.Config())["run"]


def upper_frontier(points):
    """The (KL, gold) points that no other point beats with the same or a smaller KL."""
    best, front = -math.inf, []
    for kl, gold in sorted(points, key=lambda p: (p[0], -p[1])):
        if gold > best:
            front.append((kl, gold))
            best = gold
    return front


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
    points = c.Results(results, os.path.join(cfg.out, "best_of_n"),
                       {"run": "best-of-n", "algo": "best-of-n", "variant": "", "beta": None,
                        "seed": cfg.seed, "steps": cfg.bon_max_n, "settings": {}})
    for (n, g, kl), p in zip(rows, best_of_n(proxy, proxy, ns)):
        points.add({"kl": kl, "kl_is_bound": True, "gold": g, "proxy": p[1]}, n,
                   final=n == ns[-1], n=n)
        print(f"best-of-{n}: gold {g:.3f}, KL ≤ {kl:.2f}")
    points.finish()


def method(row):
    """A row's method, from its fields: algo and variant (ppo-rm, ppo-gt, dpo-sigmoid, …)."""
    return row["algo"] + (f"-{row['variant']}" if row.get("variant") else "")


def draw_frontier(rows, png):
    """Gold reward against KL: every evaluation of every run, and each method's frontier."""
    methods = list(dict.fromkeys(method(r) for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n, m in enumerate(methods):
        pts = [(r["kl"], r["gold"]) for r in rows if method(r) == m]
        ax.scatter(*zip(*pts), s=14 if m != "sft" else 120, alpha=0.45, color=f"C{n % 10}",
                   marker="*" if m == "sft" else "o")
        ax.plot(*zip(*upper_frontier(pts)), color=f"C{n % 10}", label=m, lw=2)
    ax.set_xlabel("KL(π‖π_ref)  [nats per response]  (best-of-n: upper bound)")
    ax.set(ylabel="gold reward (VADER) on held-out prompts",
           title="reward–KL frontier: every evaluation of every run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    c.save_figure(fig, png)


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


def draw(results, out):
    """The three outputs of the module docstring, from the shared results file."""
    rows = [r for r in c.read_jsonl(results) if {"algo", "kl", "gold"} <= r.keys()]
    if not rows:
        c.die(f"{results} has no evaluation points to draw")
    draw_frontier(rows, os.path.join(out, "frontier.png"))
    draw_overoptimisation(rows, os.path.join(out, "overoptimisation.png"))
    best_gold_table(rows, os.path.join(out, "frontier.md"))


def main():
    cfg = c.parse_config(Config, __doc__)
    device = c.setup(cfg.seed, cfg.precision)  # the sweep's runs inherit its precision
    here = os.path.dirname(os.path.abspath(__file__))
    results = os.path.join(cfg.out, "results.jsonl")
    if cfg.redraw:
        if not os.path.isfile(results):
            c.die(f"--redraw: {results} does not exist; point --out at a directory that has one")
        draw(results, cfg.out)
        return
    sft_dir = os.path.join(cfg.out, "sft")
    c.require(sft_dir, "sft.py", ["--out", cfg.out])
    c.require(os.path.join(cfg.out, "reward_model"), "reward_model.py", ["--out", cfg.out],
              built_from=[sft_dir])
    done = {r["run"] for r in c.read_jsonl(results) if r.get("final")}
    for script, label, flags in sweep(cfg.quick):
        flags = [*map(str, flags), *cfg.extra.split()]
        if key_of(script, flags, cfg.out) in done:
            print(f"{label}: already in {results}, skipped")
            continue
        cmd = [sys.executable, os.path.join(here, script), "--out", cfg.out, *flags]
        log = os.path.join(cfg.out, "frontier_logs", label.replace(" ", "_") + ".log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"{label}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
        with open(log, "w") as f:
            if c.run_child(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
                c.die(f"{label} failed; see {log}")
    if "best-of-n" not in done:
        run_best_of_n(cfg, results, device)
    draw(results, cfg.out)
    print(f"wrote {cfg.out}/frontier.png, overoptimisation.png, frontier.md")


if __name__ == "__main__":
    c.run(main)
