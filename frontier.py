"""frontier.py: every method on one reward–KL plane (the DPO paper's Fig. 2), and Goodhart.

--experiment frontier (the default): each method over a small β sweep, as subprocesses of the
scripts with their own flags: PPO, RLOO and GRPO against the learned reward r_φ, PPO against the
gold reward itself (PPO-GT; not an upper bound: see docs/results.md), DPO, Preferred-FT
(sft.py --preferred: SFT on the chosen responses), and best-of-n from π_SFT (n = 1, 2, 4, …,
64: the sample with the best r_φ among n; its KL is the bound log n − (n−1)/n, not a
measurement).
The longer experiments, each behind its own --experiment (all: every one):
  goodhart        Gao et al. (2022) on a second gold, the reader's: proxies from 1.5k to 60k
                  pairs, a long small-β RLOO run against each, best-of-n (goodhart.py has
                  the design)
  goodhart-mitigation  what delays the fall (ensembles, a larger β) and optimising the
                  labeler's own function (VADER, and r_φ on its labels), on the reader's gold
  dpo-epochs      offline DPO at a small β for 16 epochs over 2048 pairs
  online-offline  offline DPO against online DPO judged by the same labeler, on as many labels
  seeds           the sweep's first run of PPO, RLOO, GRPO and DPO with seeds 0, 1, 2
A run whose final point (same key: method and every non-default setting) is already in the
results is skipped, so an interrupted experiment resumes; a run that fails does not stop the
others (the command ends by naming it). Then figures.py draws, from the results, frontier.png
(gold vs KL, each method's frontier), overoptimisation.png (proxy and gold vs √KL), each
experiment's figure, and frontier.md (best gold below KL 2, 5, 10, 20; Goodhart; the seeds).
Every run writes its model to the same out/<method>/ directory: only the points are kept.
Run: python frontier.py --quick      (≈ 19 min on a 2-core CPU once out/sft and the RM exist)
     python frontier.py --quick --experiment all    (≈ 100 min more: the five experiments)
     python frontier.py --out docs --redraw    (the README's figures, from docs/*.jsonl)
"""
import importlib, math, os, subprocess, sys, time
from dataclasses import dataclass

import torch
from transformers import GPT2ForSequenceClassification

import common as c
import goodhart
from figures import draw


EXPERIMENTS = ["frontier", "goodhart", "goodhart-mitigation", "dpo-epochs", "online-offline",
               "seeds"]
CHOICES = {"experiment": [*EXPERIMENTS, "all"]}  # flags with a fixed set of values
SWEEP_STEPS = {True: (50, 100, 300), False: (100, 200, 500)}  # --quick or not: the steps of
# PPO; of RLOO and GRPO; of DPO and Preferred-FT
# minutes of each experiment, from measured run times: 2-core AVX512-BF16 CPU, bf16 (fp32: ≈ 5×)
MINUTES = {"frontier": 19, "frontier-full": 70, **goodhart.MINUTES, "dpo-epochs": 4,
           "online-offline": 24, "seeds": 20}
DPO_EPOCHS = ["--beta", 0.03, "--n-pairs", 2048, "--steps", 1024, "--eval-every", 64]  # 16 epochs
ONLINE_BETAS = (0.1, 0.03, 0.3)  # online vs offline DPO: the β sweep (seeds at the first)
ONLINE = ["--online", "--judge", "labeler"]  # judged by the labeler that labelled the file


@dataclass
class Config:
    out: str = "out"  # root directory: reads and extends out/results.jsonl
    experiment: str = "frontier"  # frontier (β sweep), goodhart, dpo-epochs, online-offline, seeds
    quick: bool = False  # a smaller β sweep (≈ 19 min on a 2-core CPU)
    seeds: int = 3  # seeds of the runs that the seeds and online-offline experiments repeat
    redraw: bool = False  # train nothing: draw the figures from <out>/results.jsonl (--out docs)
    extra: str = ""  # flags appended to every run, e.g. '--max-new-tokens 24'
    bon_prompts: int = 256  # held-out prompts for best-of-n
    bon_max_n: int = 64  # largest n of best-of-n (powers of two up to it)
    max_new_tokens: int = 48  # response length cap of best-of-n samples
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


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
                                           "--warmup", 20])])


def experiment_runs(name, quick, seeds, out):
    """(script, label, flags, root) of every run of an experiment; root None: --out itself."""
    if name == "frontier":
        return [(*run, None) for run in sweep(quick)]
    if name.startswith("goodhart"):  # long RLOO runs, each in its proxy's root (goodhart.py)
        return goodhart.runs(out, quick, name)
    if name == "dpo-epochs":
        return [("dpo.py", "dpo β=0.03, 16 epochs of 2048 pairs", DPO_EPOCHS, None)]
    if name == "online-offline":  # equal labels: steps · batch_size pairs, online or from file
        steps = SWEEP_STEPS[quick][2]
        return [("dpo.py", f"dpo {mode} β={b} seed={s}",
                 ["--steps", steps, "--beta", b, *flags, *(["--seed", s] if s else [])], None)
                for b in ONLINE_BETAS for mode, flags in (("offline", []), ("online", ONLINE))
                for s in range(seeds if b == ONLINE_BETAS[0] else 1)]
    # seeds: the first run of each RL method and of DPO in the sweep, with seeds 0 … seeds − 1
    firsts = {}
    for script, label, flags in sweep(quick):
        firsts.setdefault(label.split()[0], (script, label, flags))
    return [(script, f"{label} seed={s}", [*flags, *(["--seed", s] if s else [])], None)
            for s in range(seeds) for m, (script, label, flags) in firsts.items()
            if m in ("ppo-rm", "rloo-rm", "grpo-rm", "dpo-sigmoid")]


def key_of(script, flags, out):
    """The results key the script will give this run (runs.run_key on its parsed flags)."""
    module = importlib.import_module(script[:-3])
    cfg = c.parse_config(module.Config, module.__doc__, getattr(module, "CHOICES", None),
                         argv=["--out", out, *map(str, flags)])
    algo = "preferred-ft" if script == "sft.py" else script[:-3]
    return c.run_key(algo, cfg, module.Config())["run"]


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


def finished(root):
    return {r["run"] for r in c.read_results(os.path.join(root, "results.jsonl")) if r.get("final")}


def run_experiment(cfg, name, device):
    """Run what is not yet in the results (an interrupted experiment resumes), saying first how
    long it will take; returns the runs that failed (a failure does not stop the others)."""
    runs = [(script, label, [*map(str, flags), *cfg.extra.split()], root or cfg.out)
            for script, label, flags, root in experiment_runs(name, cfg.quick, cfg.seeds, cfg.out)]
    todo = [run for run in runs if key_of(run[0], run[2], run[3]) not in finished(run[3])]
    minutes = MINUTES["frontier-full" if name == "frontier" and not cfg.quick else name]
    minutes *= len(todo) / len(runs)
    if name == "goodhart" and not goodhart.best_of_n_is_current(cfg.out):
        minutes += goodhart.BON_MINUTES
    print(f"{name}: {len(todo)} of {len(runs)} runs to do, ≈ {minutes:.0f}"
          " min on a 2-core bf16 CPU (fp32: ≈ 5× more)", flush=True)
    if name.startswith("goodhart"):
        goodhart.build_proxies(cfg.out, name)
    t0, here, failed = time.time(), os.path.dirname(os.path.abspath(__file__)), []
    for script, label, flags, root in runs:
        if (script, label, flags, root) not in todo:
            print(f"{label}: already in {root}/results.jsonl, skipped")
            continue
        cmd = [sys.executable, os.path.join(here, script), "--out", root, *flags]
        log = os.path.join(cfg.out, "frontier_logs", label.replace(" ", "_") + ".log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"{label}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
        with open(log, "w") as f:
            if c.run_child(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
                print(f"{label} failed; see {log} (the sweep goes on)", flush=True)
                failed.append(f"{label} ({log})")
    if name == "frontier" and "best-of-n" not in finished(cfg.out):
        run_best_of_n(cfg, os.path.join(cfg.out, "results.jsonl"), device)
    if name.startswith("goodhart"):  # (goodhart.jsonl: the runs of both experiments there are)
        goodhart.collect(cfg.out, cfg.quick, cfg.extra.split())
        if name == "goodhart" and not goodhart.best_of_n_is_current(cfg.out):  # (or proxies
            goodhart.run_best_of_n(cfg.out, device)  # rebuilt since)
    print(f"{name}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
    return failed


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES)
    device = c.setup(cfg.seed, cfg.precision)  # the sweep's runs inherit its precision
    if cfg.redraw:
        draw(cfg.out)
        return
    names = EXPERIMENTS if cfg.experiment == "all" else [cfg.experiment]
    sft_dir = os.path.join(cfg.out, "sft")
    c.require(sft_dir, "sft.py", ["--out", cfg.out])
    if names != ["goodhart"]:  # (its proxies are its own)
        c.require(os.path.join(cfg.out, "reward_model"), "reward_model.py", ["--out", cfg.out],
                  built_from=[sft_dir])
    failed = [run for name in names for run in run_experiment(cfg, name, device)]
    draw(cfg.out)
    print(f"wrote the figures and frontier.md in {cfg.out}")
    if failed:  # the others' points are kept
        c.die(f"{len(failed)} run(s) failed: {'; '.join(failed)}; the same command retries them")


if __name__ == "__main__":
    c.run(main)
