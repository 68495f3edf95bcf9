"""reward_model.py: Step 2 of RLHF: comparisons from a labeler, then a Bradley–Terry reward model.

1. For each prompt, sample K responses from π_SFT.
2. The labeler ranks them: Bradley–Terry on the gold (VADER) reward with noise temperature τ,
   P(y1 ≻ y2) = σ((r*(y1) − r*(y2)) / τ). A ranking becomes all K(K−1)/2 (chosen, rejected)
   pairs, as in InstructGPT → out/preferences.jsonl (dpo.py trains on this same file).
3. r_φ(x, y) = the SFT trunk + a scalar head read at the last real token, trained on
   −log σ(r_φ(x, y_w) − r_φ(x, y_l)); all pairs of a prompt share one batch, so each response
   is forwarded once per step (InstructGPT's trick against overfitting to repeated responses).
   The weights of the lowest validation loss are kept (with --epochs > 1 they need not be the
   last); --trunk LxD trains a from-scratch trunk of another size instead (README: "What limits
   the reward model": the labels do, not the size).
4. Shift r_φ to mean 0 on SFT samples (folded into the final LayerNorm's bias, so the saved
   model gives normalised rewards in any library).
Reports on held-out pairs: accuracy against the labeler, against the noiseless gold order, and
the labeler's own agreement with that order (the ceiling); correlation of r_φ with gold.

--gold reader or learned: the labeler ranks by the reader's gold (docs/goodhart.md) or by the
learned gold in out/gold (docs/goodhart_design.md) instead; --preferences
FILE: train on an earlier run's comparisons instead of sampling (Goodhart's proxies: subsets of one
labelled set, ensembles: one set and several seeds; combined by lib/ensemble.py: RewardEnsemble).

Left out: a separate labeler pool per split, ties ("equally good") as labels.
Run: python reward_model.py
     torchrun --nproc_per_node N reward_model.py   (N data-parallel ranks: docs/beyond.md)
"""
import json, math, os, time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2ForSequenceClassification

import common as c

WARMUP = 20  # steps of linear learning-rate warmup


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft; writes out/reward_model, preferences.jsonl
    k: int = 4  # responses per prompt ranked by the labeler → k(k−1)/2 pairs
    tau: float = 0.1  # labeler noise temperature τ (0 = noiseless)
    gold: str = "vader"  # the labeler's gold: vader, reader or learned (<out>/gold)
    preferences: str = ""  # a preferences.jsonl of an earlier run: its comparisons, no sampling
    n_prompts: int = 10000  # training prompts (train split)
    n_val_prompts: int = 300  # held-out prompts for validation pairs (validation split)
    max_new_tokens: int = 40  # response length cap when sampling
    epochs: int = 1  # passes over the training comparisons; the best validation loss is kept
    batch_size: int = 16  # prompts per step (each brings its k responses and all their pairs)
    lr: float = 5e-4  # AdamW peak learning rate, after 20 warmup steps
    schedule: str = "constant"  # learning rate after warmup: constant, or cosine decay to lr/10
    trunk: str = "sft"  # sft: start from π_SFT's trunk; LxD (e.g. 8x384): from scratch, L blocks
    eval_every: int = 50  # steps between validation evaluations
    n_eval_prompts: int = 256  # held-out prompts for the correlation with the gold reward
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def rank(gold, tau, generator=None):
    """The labeler ranks K responses, best first, by c.labeler_scores (gold/τ + Gumbel noise):
    any two are then ordered as Bradley–Terry says. τ = 0 is the noiseless labeler."""
    return torch.argsort(c.labeler_scores(gold, tau, generator), descending=True, stable=True)


def ranking_pairs(ranking):
    """A ranking (indices, best first) → all K(K−1)/2 (chosen, rejected) pairs."""
    return [(ranking[a], ranking[b]) for a in range(len(ranking))
            for b in range(a + 1, len(ranking))]


def bt_loss(chosen_rewards, rejected_rewards):
    """Bradley–Terry negative log-likelihood −log σ(r_φ(x, y_w) − r_φ(x, y_l)), mean over
    pairs. The minus matters: a slide that writes log σ(·) without it maximises the loss."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def comparisons(policy, enc, split, n, cfg, device, gen):
    """Sample k responses per prompt from π_SFT, score them with the gold reward and let the
    labeler rank them. Says how long it will take once three chunks are timed. Under torchrun
    each rank samples every N-th chunk, and all ranks get all of them."""
    prompt_ids = [p for p in c.prompts(split, enc, n) for _ in range(cfg.k)]
    chunk, t0 = 1024 if device.type == "cuda" else 512, time.time()  # CPU: 21–32% faster than 128

    def label(j):  # responses to rows j … j + chunk, and their gold reward
        with c.autocast(device):
            tokens, mask = c.sample(policy, prompt_ids[j:j + chunk], cfg.max_new_tokens)
        gold = c.gold_fn(cfg.gold, cfg.out)([c.decode(enc, t) for t in tokens.tolist()])
        if j == 2 * chunk * c.world() and len(prompt_ids) > 6 * chunk * c.world():
            minutes = (time.time() - t0) / (3 * chunk) * len(prompt_ids) / c.world() / 60
            print(f"sampling and labelling {len(prompt_ids):,} {split} responses:"
                  f" ≈ {minutes:.1f} min on this machine", flush=True)
        return [row[m].tolist() for row, m in zip(tokens[:, -mask.shape[1]:], mask)], gold

    labelled = c.split_map(label, range(0, len(prompt_ids), chunk))
    responses = [r for rs, _ in labelled for r in rs]
    gold = torch.cat([g for _, g in labelled]).view(-1, cfg.k)  # (n, k)
    return [{"prompt_ids": prompt_ids[i * cfg.k], "responses": responses[i * cfg.k:(i + 1) * cfg.k],
             "gold": gold[i].tolist(), "ranking": rank(gold[i], cfg.tau, gen).tolist()}
            for i in range(len(gold))]


def last_token(rm, tokens, mask):
    """The default readout: r_φ read at the last real token (c.reward)."""
    return c.reward(rm, tokens)


def batch_rewards(rm, groups, device, readout=last_token):
    """r_φ of every response of a batch of prompts: (n_prompts, k). readout(rm, tokens, mask)
    gives one reward per row (the size ladder tries another, never saved)."""
    prompt_ids = [g["prompt_ids"] for g in groups for _ in g["responses"]]
    tokens, mask = c.collate(prompt_ids, [r for g in groups for r in g["responses"]],
                             rm.config.pad_token_id)
    return readout(rm, tokens.to(device), mask.to(device)).view(len(groups), -1)


def pair_stats(rewards, groups):
    """Chosen/rejected rewards of all ranking pairs, and gold order agreement counts."""
    idx = [(i, w, l) for i, g in enumerate(groups) for w, l in ranking_pairs(g["ranking"])]
    i, w, l = (torch.tensor(v, device=rewards.device) for v in zip(*idx))
    gold = torch.tensor([g["gold"] for g in groups], device=rewards.device)  # (n, k)
    strict = gold[i, w] != gold[i, l]  # pairs that the noiseless labeler can order
    return rewards[i, w], rewards[i, l], gold[i, w], gold[i, l], strict


@torch.no_grad()
def all_rewards(rm, groups, device, readout=last_token, batch_size=32):
    """batch_rewards over many prompts, without gradients: (n_prompts, k)."""
    with c.autocast(device):
        return torch.cat([batch_rewards(rm, groups[j:j + batch_size], device, readout)
                          for j in range(0, len(groups), batch_size)])


def validate(rm, groups, device, readout=last_token):
    """pair_metrics of r_φ on held-out comparisons."""
    return pair_metrics(all_rewards(rm, groups, device, readout), groups)


def pair_metrics(rewards, groups):
    """Held-out loss; accuracy vs the labeler; vs the noiseless gold order; labeler vs gold."""
    chosen, rejected, gold_w, gold_l, strict = pair_stats(rewards, groups)
    gold_order = torch.where(gold_w > gold_l, chosen - rejected, rejected - chosen)
    return {"val_loss": bt_loss(chosen, rejected).item(),
            "val_acc": (chosen > rejected).float().mean().item(),
            "val_acc_gold": (gold_order[strict] > 0).float().mean().item(),
            "labeler_acc_gold": (gold_w > gold_l)[strict].float().mean().item()}


def shift_rewards(rm, m):
    """Subtract m from every reward r_φ(x, y) = w·ln_f(h) + b, in the weights: moving ln_f's
    bias by −m·w/|w|² moves w·ln_f(h) by exactly −m, whatever the input."""
    with torch.no_grad():
        w = rm.score.weight[0]
        rm.transformer.ln_f.bias -= m * w / w.dot(w)


def preference_records(splits):
    """Every ranking's pairs (ranking_pairs' order, which c.read_comparisons reads back), as
    c.write_preferences takes them: (split, prompt, chosen, rejected, their gold rewards)."""
    return [(split, g["prompt_ids"], g["responses"][w], g["responses"][l], g["gold"][w],
             g["gold"][l]) for split, groups in splits.items() for g in groups
            for w, l in ranking_pairs(g["ranking"])]


def new_reward_model(sft_dir, cfg):
    """r_φ: a GPT-2 trunk + a scalar head at the last token (HF's sequence classifier with one
    label). The SFT trunk by default, as InstructGPT; --trunk LxD builds a from-scratch trunk of
    L blocks of width D (heads of 48 dims) on the SFT's vocabulary: the README's size ladder."""
    rm = c.load_model(sft_dir, GPT2ForSequenceClassification, num_labels=1)
    if cfg.trunk == "sft":
        return rm
    n_layer, n_embd = trunk_shape(cfg.trunk)
    config = c.build_model(rm.config.bpe_ranks, n_layer, n_embd // 48, n_embd,
                           rm.config.n_positions).config
    config.num_labels = 1
    return GPT2ForSequenceClassification(config)


def trunk_shape(trunk):
    """'LxD' → (L, D), or one line saying what is wrong."""
    try:
        n_layer, n_embd = (int(v) for v in trunk.lower().split("x"))
    except ValueError:
        n_layer = n_embd = 0
    if n_layer < 1 or n_embd < 48 or n_embd % 48:
        c.die(f"--trunk {trunk}: give 'sft' or LxD with L ≥ 1 blocks of width D, a multiple of"
              " 48 (e.g. 8x384)")
    return n_layer, n_embd


def fit(rm, train, val, cfg, device, gen, logger, readout=last_token):
    """Minimise bt_loss over the training comparisons, all pairs of a prompt in one batch;
    validate every eval_every steps and end with the weights of the lowest validation loss
    (against the labeler: the gold order is not something a real practitioner has)."""
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0)
    n = len(train) // cfg.batch_size  # steps per epoch
    best, best_loss = None, float("inf")
    rm.train()
    for step in range(1, cfg.epochs * n + 1):
        if (step - 1) % n == 0:
            order = torch.randperm(len(train), generator=gen).tolist()
        j = (step - 1) % n * cfg.batch_size
        groups = [train[i] for i in c.share(order[j:j + cfg.batch_size])]  # (a rank's share)
        lr = c.lr_at(step - 1, cfg.lr, WARMUP, cfg.epochs * n, cfg.schedule == "cosine")
        for group in opt.param_groups:
            group["lr"] = lr
        with c.autocast(device):
            rewards = batch_rewards(rm, groups, device, readout)  # (batch_size, k)
        chosen, rejected, *_ = pair_stats(rewards, groups)
        loss = bt_loss(chosen, rejected)
        if not torch.isfinite(loss):
            c.die(f"non-finite loss at step {step}; try a lower --lr (nothing was saved)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        c.average_gradients(rm.parameters())
        torch.nn.utils.clip_grad_norm_(rm.parameters(), c.GRAD_CLIP)
        opt.step()
        metrics = {"loss": loss.item(), "acc": (chosen > rejected).float().mean().item()}
        if step % cfg.eval_every == 0 or step == cfg.epochs * n:
            rm.eval()
            metrics.update(validate(rm, val, device, readout))
            rm.train()
            if not math.isfinite(metrics["val_loss"]):
                c.die(f"held-out loss is not finite at step {step}: training diverged and nothing"
                      " was saved; try a lower --lr")
            if metrics["val_loss"] < best_loss:
                best_loss = metrics["val_loss"]
                best = {k: v.detach().clone() for k, v in rm.state_dict().items()}
        logger.log(step, **metrics)
    rm.load_state_dict(best)
    return rm.eval()


def main():
    cfg = c.parse_config(Config, __doc__, {"schedule": ["constant", "cosine"],
                                           "gold": c.GOLD_NAMES})
    if cfg.k < 2:
        c.die(f"--k {cfg.k}: a ranking needs at least 2 responses per prompt")
    if cfg.tau < 0:
        c.die(f"--tau {cfg.tau}: the labeler's noise temperature must be ≥ 0 (0 = noiseless)")
    if cfg.n_prompts < cfg.batch_size:
        c.die(f"--n-prompts {cfg.n_prompts} is smaller than --batch-size {cfg.batch_size}: not"
              " one training step; give more prompts or a smaller batch")
    if cfg.trunk != "sft":
        trunk_shape(cfg.trunk)
    device = c.setup(cfg.seed, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)
    sft_dir, out_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    c.require(sft_dir, "sft.py", c.build_args(cfg))
    # a finished reward model and its preferences.jsonl stay as they are until this run finishes
    run_dir = c.start_stage(out_dir)
    pref_path = c.stage_file(out_dir, os.path.join(cfg.out, "preferences.jsonl"))

    # 1–2. comparison data: k SFT samples per prompt, ranked by the labeler
    policy = c.load_model(sft_dir).to(device).eval()
    c.check_positions(policy, cfg)
    enc = c.tokenizer(policy.config.bpe_ranks)
    if cfg.preferences:  # an earlier run's labels (same SFT samples, same labeler)
        order = ranking_pairs(range(cfg.k))  # the pairs of one prompt, as they were written
        train = c.read_comparisons(cfg.preferences, "train", cfg.n_prompts, cfg.k, order)
        val = c.read_comparisons(cfg.preferences, "valid", cfg.n_val_prompts, cfg.k, order)
    else:
        train = comparisons(policy, enc, "train", cfg.n_prompts, cfg, device, gen)
        val = comparisons(policy, enc, "valid", cfg.n_val_prompts, cfg, device, gen)
    if c.rank() == 0:  # (under torchrun every rank has them all, and rank 0 writes)
        c.write_preferences(pref_path, enc, preference_records({"train": train, "valid": val}))
    print(f"{len(train) * cfg.k * (cfg.k - 1) // 2} training pairs, labeler τ = {cfg.tau}")

    # 3. the reward model: SFT trunk + a scalar head (HF's sequence classifier with one label)
    rm = new_reward_model(sft_dir, cfg).to(device)
    c.check_space(out_dir, rm)
    total = cfg.epochs * (len(train) // cfg.batch_size)
    logger = c.Logger(out_dir, total, evaluates=lambda s: s % cfg.eval_every == 0 or s == total)
    fit(rm, train, val, cfg, device, gen, logger)

    # 4. normalise: mean 0 on SFT samples, folded into the saved weights
    rm.eval()
    shift_rewards(rm, all_rewards(rm, val, device).mean())
    c.save_model(rm, run_dir)
    if c.rank() > 0:  # under torchrun rank 0 writes the report
        return

    # report: correlation with the gold reward on fresh SFT samples of held-out prompts
    ev_prompts = c.prompts("eval", enc, cfg.n_eval_prompts)
    proxy, gold = [], []
    with torch.no_grad(), c.autocast(device):
        for tokens, _ in c.sample_batched(policy, ev_prompts, cfg.max_new_tokens, 64):
            proxy.append(c.reward(rm, tokens).cpu())
            gold.append(c.gold_fn(cfg.gold, cfg.out)([c.decode(enc, t) for t in tokens.tolist()]))
    proxy, gold = torch.cat(proxy), torch.cat(gold)
    corr = torch.corrcoef(torch.stack([proxy, gold]))[0, 1].item()
    val_rewards = all_rewards(rm, val, device)  # normalised: the saved model's rewards
    final = pair_metrics(val_rewards, val)
    with open(os.path.join(run_dir, "report.json"), "w") as f:
        json.dump({**final, "corr_gold": corr, "proxy_mean_sft": proxy.mean().item(),
                   "proxy_se_sft": proxy.std().item() / len(proxy) ** 0.5,
                   "proxy_mean_val": val_rewards.mean().item(),
                   "n_val_responses": len(val) * cfg.k, "tau": cfg.tau, "k": cfg.k,
                   "gold": cfg.gold}, f, indent=1)
    c.write_card(out_dir, cfg, "Reward model r_φ (Bradley–Terry, scalar head at the last token,"
                 " mean 0 on SFT samples)", f"pair accuracy {final['val_acc']:.3f} vs the labeler,"
                 f" {final['val_acc_gold']:.3f} vs the gold order; corr(r_φ, gold) {corr:.3f}",
                 classifier=True)
    c.plot_metrics(out_dir, [("loss", "val_loss"), ("acc", "val_acc", "val_acc_gold",
                                                    "labeler_acc_gold")], "training.png")
    c.plot_scatter(gold, proxy, f"gold reward r* ({cfg.gold})", "learned reward r_φ",
                   os.path.join(run_dir, "rm_vs_gold.png"),
                   f"held-out SFT samples, ρ = {corr:.2f}")
    print(f"held-out accuracy: vs labeler {final['val_acc']:.3f} | vs gold order"
          f" {final['val_acc_gold']:.3f} (labeler's own: {final['labeler_acc_gold']:.3f}) |"
          f" corr(r_φ, r*) {corr:.3f} | saved {out_dir}")
    c.finish_stage(out_dir, cfg, [sft_dir])


if __name__ == "__main__":
    c.run(main)
