"""bench/reward_ladder.py: what limits the reward model? Its accuracy against the noiseless gold
order as a function of trunk size, labelled pairs, epochs, learning-rate schedule, readout and
label noise (τ = 0 is the control: is the gap label noise or capacity?).

Samples the comparisons once from out/sft as reward_model.py does (k = 4 responses per prompt,
10,000 training and 300 validation prompts, labeler τ = 0.1) and 256 fresh held-out samples for
the correlation with gold; then trains one reward model per variant on them and appends one row
per variant to --results as it finishes (a rerun skips the variants already there). Draws
reward_ladder.png beside the results: accuracy against trunk size and against labelled pairs.

Run: python bench/reward_ladder.py                (needs out/sft; builds it if missing)
     python bench/reward_ladder.py --only default,tau0 --results /tmp/ladder.jsonl
"""
import dataclasses, json, os, sys, time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
import reward_model as rmod  # noqa: E402


@dataclass
class Config:
    out: str = "out"  # pipeline root: reads out/sft; caches the samples in out/reward_ladder
    results: str = "docs/reward_ladder.jsonl"  # one row per variant; reward_ladder.png beside it
    n_prompts: int = 10000  # training prompts sampled (reward_model.py's default)
    n_val_prompts: int = 300  # validation prompts sampled (reward_model.py's default)
    only: str = ""  # comma-separated variant names to run ('' = all of them)
    seed: int = 0  # random seed of the sampling (each variant also sets its own)
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


# name → (reward_model.py settings that differ from its defaults, readout)
VARIANTS = {  # in the order they run, most telling first
    "default": ({}, "last"),
    "tau0": ({"tau": 0.0}, "last"),
    "3 epochs cosine": ({"epochs": 3, "schedule": "cosine"}, "last"),
    "mean readout": ({}, "mean"),
    "scratch 4x192": ({"trunk": "4x192", "epochs": 3, "schedule": "cosine"}, "last"),
    "scratch 8x384": ({"trunk": "8x384", "epochs": 3, "schedule": "cosine"}, "last"),
    "pairs 6k": ({"n_prompts": 1000}, "last"),
    "pairs 18k": ({"n_prompts": 3000}, "last"),
    "cosine": ({"schedule": "cosine"}, "last"),
    "lr 2e-3 cosine": ({"lr": 2e-3, "schedule": "cosine"}, "last"),
    "lr 1e-4": ({"lr": 1e-4}, "last"),
    "scratch 2x96": ({"trunk": "2x96", "epochs": 3, "schedule": "cosine"}, "last"),
    "scratch 6x288": ({"trunk": "6x288", "epochs": 3, "schedule": "cosine"}, "last"),
    "k8": ({"k": 8, "n_prompts": 5000}, "last"),
    "k8 3 epochs cosine": ({"k": 8, "n_prompts": 5000, "epochs": 3, "schedule": "cosine"}, "last"),
    "default seed 1": ({"seed": 1}, "last"),
    "default seed 2": ({"seed": 2}, "last"),
}


def base(cfg):
    return rmod.Config(out=cfg.out, n_prompts=cfg.n_prompts, n_val_prompts=cfg.n_val_prompts)


def samples(cfg, device, k=4):
    """Comparisons (train, val) with k responses per prompt, as many responses as k = 4 gives,
    and 256 held-out single samples; sampled once and cached."""
    path = os.path.join(cfg.out, "reward_ladder", "samples.pt" if k == 4 else f"samples_k{k}.pt")
    if os.path.exists(path):
        return torch.load(path)
    sft = c.load_model(os.path.join(cfg.out, "sft")).to(device).eval()
    enc, rcfg = c.tokenizer(sft.config.bpe_ranks), base(cfg)
    rcfg = dataclasses.replace(rcfg, k=k, n_prompts=rcfg.n_prompts * 4 // k,
                               n_val_prompts=rcfg.n_val_prompts * 4 // k)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = {"train": rmod.comparisons(sft, enc, "train", rcfg.n_prompts, rcfg, device, gen),
            "valid": rmod.comparisons(sft, enc, "valid", rcfg.n_val_prompts, rcfg, device, gen),
            "eval": rmod.comparisons(sft, enc, "eval", rcfg.n_eval_prompts,
                                     dataclasses.replace(rcfg, k=1), device, gen)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(data, path + ".tmp")
    os.replace(path + ".tmp", path)
    return data


def relabel(groups, tau, seed):
    """The same responses ranked by a labeler of another noise temperature."""
    gen = torch.Generator().manual_seed(seed)
    return [{**g, "ranking": rmod.rank(g["gold"], tau, gen).tolist()} for g in groups]


def run_variant(name, cfg, device):
    overrides, readout = VARIANTS[name]
    rcfg = dataclasses.replace(base(cfg), **overrides)
    data = samples(cfg, device, rcfg.k)
    train, val = data["train"][:rcfg.n_prompts], data["valid"]
    if rcfg.tau != rmod.Config.tau:
        train, val = relabel(train, rcfg.tau, 1), relabel(val, rcfg.tau, 2)
    torch.manual_seed(rcfg.seed)
    gen = torch.Generator().manual_seed(rcfg.seed)
    rm = rmod.new_reward_model(os.path.join(cfg.out, "sft"), rcfg).to(device)
    logger = c.Logger(os.path.join(cfg.out, "reward_ladder", name.replace(" ", "_")),
                      rcfg.epochs * rmod.steps_per_epoch(train, rcfg), every=60)
    t0 = time.time()
    rmod.fit(rm, train, val, rcfg, device, gen, logger, readout)
    seconds = time.time() - t0
    final = rmod.validate(rm, samples(cfg, device)["valid"], device, readout)  # k = 4, τ = 0.1
    proxy = rmod.all_rewards(rm, data["eval"], device, readout).flatten().cpu()
    gold = torch.tensor([g["gold"][0] for g in data["eval"]])
    corr = torch.corrcoef(torch.stack([proxy, gold]))[0, 1].item()
    return {"name": name, **overrides, "readout": readout, "trunk": rcfg.trunk,
            "n_params": sum(p.numel() for p in rm.transformer.parameters()),
            "k": rcfg.k, "n_pairs": len(train) * rcfg.k * (rcfg.k - 1) // 2, "epochs": rcfg.epochs,
            "lr": rcfg.lr, "schedule": rcfg.schedule, "tau": rcfg.tau, "seed": rcfg.seed,
            **final, "corr_gold": corr, "seconds": round(seconds, 1),
            "device": str(device), "precision": os.environ.get(c.PRECISION_ENV, "")}


def draw(rows, png):
    """Accuracy against the gold order vs trunk size (from scratch, and the SFT trunk), and vs
    labelled pairs; the labeler's own agreement as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    scratch = sorted((r for r in rows if r["trunk"] != "sft"), key=lambda r: r["n_params"])
    ax1.plot([r["n_params"] / 1e6 for r in scratch], [r["val_acc_gold"] for r in scratch], "o-",
             label="from scratch, 3 epochs, cosine")
    for r in rows:
        if r["trunk"] == "sft" and r["name"] in ("default", "3 epochs cosine"):
            ax1.plot(r["n_params"] / 1e6, r["val_acc_gold"], "s", label=f"SFT trunk: {r['name']}")
    ax1.set_xscale("log")
    ax1.set_xlabel("trunk parameters (M)")
    ax1.set_ylabel("held-out accuracy vs the gold order")
    data = sorted((r for r in rows if r["name"] in ("pairs 6k", "pairs 18k", "default")),
                  key=lambda r: r["n_pairs"])
    ax2.plot([r["n_pairs"] for r in data], [r["val_acc_gold"] for r in data], "o-",
             label="SFT trunk, 1 epoch")
    ax2.set_xscale("log")
    ax2.set_xlabel("labelled training pairs")
    for ax in (ax1, ax2):
        ax.axhline(rows[0]["labeler_acc_gold"], ls="--", c="gray", label="the labeler (τ = 0.1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("reward model: what limits agreement with the gold order")
    c.save_figure(fig, png)


def main():
    cfg = c.parse_config(Config, __doc__)
    names = [n.strip() for n in cfg.only.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        c.die(f"--only: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    device = c.setup(cfg.seed, cfg.precision)
    c.require(os.path.join(cfg.out, "sft"), "sft.py", ["--out", cfg.out])
    done = {r["name"] for r in c.read_jsonl(cfg.results)} if os.path.exists(cfg.results) else set()
    for name in names:
        if name in done:
            continue
        row = run_variant(name, cfg, device)
        c.append_result(cfg.results, row)
        print(f"{name}: vs gold order {row['val_acc_gold']:.3f}, vs labeler {row['val_acc']:.3f},"
              f" corr {row['corr_gold']:.3f}, {row['seconds']:.0f} s", flush=True)
    rows = c.read_jsonl(cfg.results)
    draw(rows, os.path.splitext(cfg.results)[0] + ".png")
    print(f"{'variant':<18} {'params':>7} {'pairs':>6} {'vs gold':>7} {'vs lab.':>7} {'corr':>5}")
    for r in rows:
        print(f"{r['name']:<18} {r['n_params'] / 1e6:>6.2f}M {r['n_pairs']:>6} "
              f"{r['val_acc_gold']:>7.3f} {r['val_acc']:>7.3f} {r['corr_gold']:>5.3f}")


if __name__ == "__main__":
    c.run(main)
