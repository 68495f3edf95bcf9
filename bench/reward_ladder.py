"""bench/reward_ladder.py: what limits the reward model? Its accuracy against the noiseless gold
order as a function of trunk size, labelled pairs, epochs, learning-rate schedule, readout and
label noise (τ = 0 is the control: is the gap label noise or capacity?).

Samples the comparisons once from out/sft as reward_model.py does (k = 4 responses per prompt,
10,000 training and 300 validation prompts, labeler τ = 0.1) and 256 fresh held-out samples for
the correlation with gold; then trains one reward model per variant on them and appends one row
per variant to --results (by default out/reward_ladder.jsonl, never the committed docs file) as
it finishes (a rerun skips the variants already there). Draws reward_ladder.png beside the
results: accuracy against trunk size and against labelled pairs, ±1 binomial standard error.

Run: python bench/reward_ladder.py                (needs out/sft; builds it if missing)
     python bench/reward_ladder.py --only default,tau0
     python bench/reward_ladder.py --redraw --results docs/reward_ladder.jsonl   (docs' figure)
"""
import dataclasses, os, sys, time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
import reward_model as rmod  # noqa: E402


@dataclass
class Config:
    out: str = "out"  # pipeline root: reads out/sft; caches the samples in out/reward_ladder
    results: str = ""  # one row per variant, the figure beside it ('': out/reward_ladder.jsonl)
    n_prompts: int = 10000  # training prompts sampled (reward_model.py's default)
    n_val_prompts: int = 300  # validation prompts sampled (reward_model.py's default)
    only: str = ""  # comma-separated variant names to run ('' = all of them)
    redraw: bool = False  # train nothing: draw the figure and table from --results
    seed: int = 0  # random seed of the sampling (each variant also sets its own)
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


# name → (reward_model.py settings that differ from its defaults, readout)
VARIANTS = {  # in the order they run, most telling first
    "default": ({}, "last"),
    "tau0": ({"tau": 0.0}, "last"),
    "3 epochs cosine": ({"epochs": 3, "schedule": "cosine"}, "last"),
    "2 epochs cosine": ({"epochs": 2, "schedule": "cosine"}, "last"),
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
    "pairs 180k": ({"rounds": 3}, "last"),
    "pairs 300k": ({"rounds": 5}, "last"),
    "bag-of-words": ({}, "bow"),
    "bag-of-words 6k": ({"n_prompts": 1000}, "bow"),
    "bag-of-words 18k": ({"n_prompts": 3000}, "bow"),
    "default seed 1": ({"seed": 1}, "last"),
    "default seed 2": ({"seed": 2}, "last"),
}


def base(cfg):
    return rmod.Config(out=cfg.out, n_prompts=cfg.n_prompts, n_val_prompts=cfg.n_val_prompts)


def samples(cfg, device, k=4, rounds=1):
    """Comparisons (train, val) with k responses per prompt, as many responses as k = 4 gives
    (× rounds for the training prompts: the same prompts again with fresh responses), and 256
    held-out single samples; sampled once and cached."""
    path = os.path.join(cfg.out, "reward_ladder", f"samples_k{k}_r{rounds}.pt")
    sft_id = c.record_id(os.path.join(cfg.out, "sft"))
    if os.path.exists(path) and torch.load(path).get("sft") == sft_id:
        return torch.load(path)
    sft = c.load_model(os.path.join(cfg.out, "sft")).to(device).eval()
    enc, rcfg = c.tokenizer(sft.config.bpe_ranks), base(cfg)
    rcfg = dataclasses.replace(rcfg, k=k, n_prompts=rcfg.n_prompts * 4 // k,
                               n_val_prompts=rcfg.n_val_prompts * 4 // k)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = []
    for _ in range(rounds):  # each round: the same prompts, fresh responses and labels
        train += rmod.comparisons(sft, enc, "train", rcfg.n_prompts, rcfg, device, gen)
    data = {"train": train,
            "valid": rmod.comparisons(sft, enc, "valid", rcfg.n_val_prompts, rcfg, device, gen),
            "eval": rmod.comparisons(sft, enc, "eval", rcfg.n_eval_prompts,
                                     dataclasses.replace(rcfg, k=1), device, gen), "sft": sft_id}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(data, path + ".tmp")
    os.replace(path + ".tmp", path)
    return data


def mean_readout(rm, tokens, mask):
    """The experiment's readout: the scalar head on every response token's hidden state,
    averaged over the real response tokens (padding excluded): (B,)."""
    scores = rm.score(c.forward(rm, tokens)[:, -mask.shape[1]:]).squeeze(-1).float()
    return c.masked_mean(scores, mask, dim=1)


READOUTS = {"last": rmod.last_token, "mean": mean_readout}


def relabel(groups, tau, seed):
    """The same responses ranked by a labeler of another noise temperature."""
    gen = torch.Generator().manual_seed(seed)
    return [{**g, "ranking": rmod.rank(g["gold"], tau, gen).tolist()} for g in groups]


def bag_of_words(groups, n_vocab):
    """Token counts of each response: (n_prompts, k, n_vocab)."""
    X = torch.zeros(len(groups), len(groups[0]["responses"]), n_vocab)
    for i, g in enumerate(groups):
        for j, r in enumerate(g["responses"]):
            X[i, j].index_add_(0, torch.tensor(r, dtype=torch.long), torch.ones(len(r)))
    return X


def fit_bag_of_words(train, n_vocab, steps=300, lr=0.05):
    """The control with VADER's own form: r(y) = Σ_t w[y_t], a linear score of token counts
    (VADER sums word valences), fitted by Bradley–Terry on the same pairs (full batch, Adam)."""
    X, w = bag_of_words(train, n_vocab), torch.zeros(n_vocab, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        chosen, rejected, *_ = rmod.pair_stats(X @ w, train)
        loss = rmod.bt_loss(chosen, rejected) + 1e-4 * w.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda groups: bag_of_words(groups, n_vocab) @ w.detach()


def run_variant(name, cfg, device):
    overrides, readout = VARIANTS[name]
    rounds = overrides.get("rounds", 1)
    rcfg = dataclasses.replace(base(cfg), **{k: v for k, v in overrides.items() if k != "rounds"})
    data = samples(cfg, device, rcfg.k, rounds)
    train, val = data["train"][:rcfg.n_prompts * rounds], data["valid"]
    if rcfg.tau != rmod.Config.tau:
        train, val = relabel(train, rcfg.tau, 1), relabel(val, rcfg.tau, 2)
    torch.manual_seed(rcfg.seed)
    gen = torch.Generator().manual_seed(rcfg.seed)
    sft_dir, t0 = os.path.join(cfg.out, "sft"), time.time()
    if readout == "bow":
        n_params = c.load_model(sft_dir).config.vocab_size
        score = fit_bag_of_words(train, n_params)
    else:
        rm = rmod.new_reward_model(sft_dir, rcfg).to(device)
        logger = c.Logger(os.path.join(cfg.out, "reward_ladder", name.replace(" ", "_")),
                          rcfg.epochs * (len(train) // rcfg.batch_size), every=60)
        rmod.fit(rm, train, val, rcfg, device, gen, logger, READOUTS[readout])
        n_params = sum(p.numel() for p in rm.transformer.parameters())
        score = lambda groups: rmod.all_rewards(rm, groups, device, READOUTS[readout]).cpu()
    seconds = time.time() - t0
    common_samples = samples(cfg, device)  # every variant is judged on the same samples
    valid, held_out = common_samples["valid"], common_samples["eval"]
    proxy = score(held_out).flatten()
    gold = torch.tensor([g["gold"][0] for g in held_out])
    corr = torch.corrcoef(torch.stack([proxy, gold]))[0, 1].item()
    return {"name": name, **overrides, "readout": readout, "trunk": rcfg.trunk,
            "n_params": n_params, "k": rcfg.k,
            "n_pairs": len(train) * rcfg.k * (rcfg.k - 1) // 2, "epochs": rcfg.epochs,
            "lr": rcfg.lr, "schedule": rcfg.schedule, "tau": rcfg.tau, "seed": rcfg.seed,
            **rmod.pair_metrics(score(valid), valid), "corr_gold": corr,
            "n_val_pairs": sum(len(g["ranking"]) * (len(g["ranking"]) - 1) // 2 for g in valid),
            "seconds": round(seconds, 1), "device": str(device),
            "precision": os.environ.get(c.PRECISION_ENV, "")}


def stderr(row):
    """±1 binomial standard error of an accuracy over the validation pairs (n_val_pairs where
    the row has it; else the 6 pairs of each of the 300 validation prompts)."""
    p, n = row["val_acc_gold"], row.get("n_val_pairs", 1800)
    return (p * (1 - p) / n) ** 0.5


def draw(rows, png):
    """Accuracy against the gold order vs trunk size (from scratch, and the SFT trunk), and vs
    labelled pairs, each ±1 standard error; the labeler's own agreement dashed; the seed spread
    of the default shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    scratch = sorted((r for r in rows if r["trunk"] not in ("sft", "none")),
                     key=lambda r: r["n_params"])
    ax1.errorbar([r["n_params"] / 1e6 for r in scratch], [r["val_acc_gold"] for r in scratch],
                 [stderr(r) for r in scratch], fmt="o-", capsize=3,
                 label="from scratch, 3 epochs, cosine")
    for r, marker in zip((r for n in ("default", "3 epochs cosine") for r in rows
                          if r["name"] == n and r["trunk"] == "sft"), "sD"):
        ax1.errorbar(r["n_params"] / 1e6, r["val_acc_gold"], stderr(r), fmt=marker, capsize=3,
                     label=f"SFT trunk: {r['name']}")
    ax1.set_xscale("log")
    ax1.set_xlabel("trunk parameters (M)")
    ax1.set_ylabel("held-out accuracy vs the gold order")
    for names, label in ((("pairs 6k", "pairs 18k", "default", "pairs 300k"), "SFT trunk, 1 epoch"),
                         (("bag-of-words 6k", "bag-of-words 18k", "bag-of-words"),
                          "bag of words (VADER's own form), CPU samples")):
        data = sorted((r for r in rows if r["name"] in names), key=lambda r: r["n_pairs"])
        ax2.errorbar([r["n_pairs"] for r in data], [r["val_acc_gold"] for r in data],
                     [stderr(r) for r in data], fmt="o-", capsize=3, label=label)
    ax2.set_xscale("log")
    ax2.set_xlabel("labelled training pairs")
    seeds = [r["val_acc_gold"] for r in rows if r["name"].startswith("default")]
    for ax in (ax1, ax2):
        ax.axhline(rows[0]["labeler_acc_gold"], ls="--", c="gray", label="the labeler (τ = 0.1)")
        if len(seeds) > 1:
            ax.axhspan(min(seeds), max(seeds), color="gray", alpha=0.15,
                       label=f"default, {len(seeds)} seeds: range")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle("reward model: what limits agreement with the gold order (±1 standard error)")
    c.save_figure(fig, png)


def table(rows):
    """The rows as a markdown table (docs/results.md quotes it; tests/test_docs.py checks it)."""
    lines = ["| variant | device, precision | trunk params | labelled pairs | vs gold order |"
             " vs labeler | corr(r_φ, r*) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        trunk = "–" if r["readout"] == "bow" else f"{r['n_params'] / 1e6:.2f}M"
        lines.append(f"| {r['name']} | {r['device']}, {r.get('precision') or 'auto'} | {trunk} |"
                     f" {r['n_pairs']} | {r['val_acc_gold']:.3f} | {r['val_acc']:.3f} |"
                     f" {r['corr_gold']:.3f} |")
    return lines


def main():
    cfg = c.parse_config(Config, __doc__)
    cfg.results = cfg.results or os.path.join(cfg.out, "reward_ladder.jsonl")
    names = [n.strip() for n in cfg.only.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        c.die(f"--only: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    device = c.setup(cfg.seed, cfg.precision)
    done = {r["name"] for r in c.read_jsonl(cfg.results)}
    for name in [] if cfg.redraw else names:
        if name in done:
            continue
        c.require(os.path.join(cfg.out, "sft"), "sft.py", ["--out", cfg.out])
        row = {**run_variant(name, cfg, device), "pipeline": c.pipeline_at(cfg.out)}
        c.append_row(cfg.results, row)
        print(f"{name}: vs gold order {row['val_acc_gold']:.3f}, vs labeler {row['val_acc']:.3f},"
              f" corr {row['corr_gold']:.3f}, {row['seconds']:.0f} s", flush=True)
    rows = c.read_jsonl(cfg.results)
    if not rows:
        c.die(f"{cfg.results} holds no results to draw; run some variants first")
    draw(rows, os.path.splitext(cfg.results)[0] + ".png")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    c.run(main)
