"""frontier.py: every method on one reward–KL plane (the DPO paper's Fig. 2), and Goodhart.

Runs each method over a small β sweep, as subprocesses of the scripts with their own flags:
PPO, RLOO and GRPO against the learned reward r_φ, PPO against the gold reward itself (PPO-GT, the
upper reference), DPO, Preferred-FT (sft.py --preferred: SFT on the chosen responses), and
best-of-n from π_SFT (n = 1, 2, 4, …, 64: the sample with the best r_φ among n; its KL is the
bound log n − (n−1)/n, not a measurement). A run whose final point (same name, same
steps) is already in out/results.jsonl is skipped, so an interrupted sweep resumes. Then it
draws, from that file:
  frontier.png            gold reward vs KL, every evaluation of every run, each method's frontier
  overoptimisation.png    proxy and gold reward vs √KL along the PPO, RLOO, GRPO runs (Goodhart)
  frontier.md             the best gold reward of each method below KL = 2, 5, 10, 20 nats
Every run writes its model to the same out/<method>/ directory: only the points are kept.
Run: python frontier.py --quick      (19 min on a 2-core CPU once out/sft and the RM exist)
     python frontier.py              (the full sweep, ≈ 60 min estimated)
     python frontier.py --out docs --redraw    (the README's figures, from docs/results.jsonl)
"""
import math, os, subprocess, sys
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
    """(script, run name, steps, flags) of every run; names as the scripts write them."""
    if quick:
        ppo, gt, rloo, grpo, dpo = [0.1, 0.02], [0.05], [0.1, 0.02], [0.1, 0.02], [0.3, 0.1]
        steps = (60, 100, 300)
    else:
        ppo, gt, rloo, grpo, dpo = [0.3, 0.1, 0.05, 0.02, 0.01], [0.1, 0.03], \
            [0.3, 0.1, 0.05, 0.02, 0.01], [0.3, 0.1, 0.05, 0.02, 0.01], [1.0, 0.3, 0.1, 0.03]
        steps = (100, 200, 500)
    return ([("ppo.py", f"ppo-rm β={b}", steps[0], ["--beta", b]) for b in ppo]
            + [("ppo.py", f"ppo-gt β={b}", steps[0], ["--beta", b, "--reward", "gold"])
               for b in gt]
            + [("rloo.py", f"rloo-rm β={b}", steps[1], ["--beta", b]) for b in rloo]
            + [("grpo.py", f"grpo-rm β={b}", steps[1], ["--beta", b]) for b in grpo]
            + [("dpo.py", f"dpo-sigmoid β={b}", steps[2], ["--beta", b]) for b in dpo]
            + [("sft.py", "preferred-ft", steps[2], ["--preferred", "--lr", 3e-4,
                                                     "--warmup", 20])])


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
    c.drop_results(results, "best-of-n")
    for (n, g, kl), p in zip(rows, best_of_n(proxy, proxy, ns)):
        c.append_result(results, {"kl": kl, "kl_is_bound": True, "gold": g, "proxy": p[1]},
                        run="best-of-n", algo="best-of-n", beta=None, n=n, step=n,
                        final=n == ns[-1])
        print(f"best-of-{n}: gold {g:.3f}, KL ≤ {kl:.2f}")


def method(run_name):
    return run_name.split(" β=")[0]


def draw(results, out):
    """The three figures of the module docstring, from the shared results file."""
    rows = c.read_jsonl(results)
    methods = list(dict.fromkeys(method(r["run"]) for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n, m in enumerate(methods):
        pts = [(r["kl"], r["gold"]) for r in rows if method(r["run"]) == m]
        ax.scatter(*zip(*pts), s=14 if m != "sft" else 120, alpha=0.45, color=f"C{n}",
                   marker="*" if m == "sft" else "o")
        ax.plot(*zip(*upper_frontier(pts)), color=f"C{n}", label=m, lw=2)
    ax.set_xlabel("KL(π‖π_ref)  [nats per response]  (best-of-n: upper bound)")
    ax.set(ylabel="gold reward (VADER) on held-out prompts",
           title="reward–KL frontier: every evaluation of every run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    c.save_figure(fig, os.path.join(out, "frontier.png"))

    panels = ("ppo-rm", "rloo-rm", "grpo-rm")
    runs = [r for r in dict.fromkeys(r["run"] for r in rows) if method(r) in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True)
    for ax, m in zip(axes, panels):
        for n, run_name in enumerate(r for r in runs if method(r) == m):
            pts = sorted((r["step"], math.sqrt(max(r["kl"], 0)), r["proxy"], r["gold"])
                         for r in rows if r["run"] == run_name)
            x = [p[1] for p in pts]
            ax.plot(x, [p[2] for p in pts], "-", color=f"C{n}", label=f"{run_name} proxy")
            ax.plot(x, [p[3] for p in pts], "--", color=f"C{n}", label=f"{run_name} gold")
        ax.set(xlabel="√KL(π‖π_ref)", title=m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("reward (proxy r_φ solid, gold r* dashed)")
    c.save_figure(fig, os.path.join(out, "overoptimisation.png"))

    lines = ["| method | " + " | ".join(f"KL ≤ {k}" for k in KL_LIMITS) + " |",
             "|---|" + "---|" * len(KL_LIMITS)]
    for m in methods:
        best = [max((r["gold"] for r in rows if method(r["run"]) == m and r["kl"] <= k),
                    default=None) for k in KL_LIMITS]
        lines.append(f"| {m} | " + " | ".join("–" if b is None else f"{b:.3f}" for b in best)
                     + " |")
    with open(os.path.join(out, "frontier.md"), "w") as f:
        f.write("Best gold reward on held-out prompts below each KL (nats per response)\n\n"
                + "\n".join(lines) + "\n")
    print("\n".join(lines))


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
    c.require(os.path.join(cfg.out, "reward_model"), "reward_model.py", ["--out", cfg.out])
    done = {(r["run"], r["step"]) for r in c.read_jsonl(results) if r.get("final")}
    for script, run_name, steps, flags in sweep(cfg.quick):
        if (run_name, steps) in done:
            print(f"{run_name}: already in {results}, skipped")
            continue
        cmd = [sys.executable, os.path.join(here, script), "--out", cfg.out, "--steps", str(steps),
               *map(str, flags), *cfg.extra.split()]
        log = os.path.join(cfg.out, "frontier_logs", run_name.replace(" ", "_") + ".log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"{run_name}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
        with open(log, "w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                c.die(f"{run_name} failed; see {log}")
    if ("best-of-n", cfg.bon_max_n) not in done:
        run_best_of_n(cfg, results, device)
    draw(results, cfg.out)
    print(f"wrote {cfg.out}/frontier.png, overoptimisation.png, frontier.md")


if __name__ == "__main__":
    c.run(main)
