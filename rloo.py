"""rloo.py: REINFORCE Leave-One-Out (Ahmadian et al. 2024): Step 3 the light way, against r_φ.

RLHF as a bandit: the action is the whole response. The models: the policy π_θ (trained, from
SFT), the reward model r_φ and the reference π_ref (frozen); no critic. Each iteration:
1. sample k responses to each prompt of a batch; 2. score them with r_φ;
3. reward R_i = r_φ(x, y_i) − β·KL_i, with the sequence KL Σ_t log π(y_t)/π_ref(y_t);
4. advantage A_i = R_i − b_i, the baseline b_i = the mean reward of the other k−1 responses;
5. update on −mean_i A_i log π(y_i|x) (--ppo-epochs > 1: a sequence-level clipped ratio);
6. log, and every few steps evaluate on held-out prompts.
--reward gold optimises the gold reward itself (the counterpart of PPO-GT). --baseline mean
(one baseline for the whole batch, its mean reward) or none (plain REINFORCE) replace step 4's
leave-one-out baseline, to measure what a baseline buys (docs/lecture_measured.md).

Left out: advantage whitening, a penalty for responses that never stop.
Run: python rloo.py          (builds out/sft and out/reward_model first if they are missing)
     torchrun --nproc_per_node N rloo.py   (N data-parallel ranks: docs/beyond.md)
"""
import collections, os
from dataclasses import dataclass

import torch

import common as c


CHOICES = {"reward": ["model", "gold"], "gold": c.GOLD_NAMES,  # flags with a fixed set of values
           "baseline": ["loo", "mean", "none"]}


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft, out/reward_model; writes out/rloo
    reward: str = "model"  # what to maximise: 'model' = learned r_φ, 'gold' = the gold
    gold: str = "vader"  # the gold: vader, or learned (<out>/gold, docs/goodhart_design.md)
    beta: float = 0.05  # KL coefficient β
    k: int = 4  # responses per prompt (≥ 2: each one's baseline comes from the others)
    baseline: str = "loo"  # loo: leave-one-out (RLOO); mean: the batch mean; none: REINFORCE
    steps: int = 100  # iterations (one batch of samples and its update each)
    batch_size: int = 16  # prompts per iteration (k responses each)
    minibatch_size: int = 16  # responses per gradient step
    ppo_epochs: int = 1  # passes over each batch (ratio 1 on the first minibatch)
    lr: float = 6e-5  # AdamW learning rate
    clip: float = 0.2  # ε of the clipped ratio (only matters if ppo_epochs > 1)
    temperature: float = 1.0  # sampling temperature (log-probs use the same)
    max_new_tokens: int = 40  # response length cap
    max_kl: float = 100.0  # stop if the batch KL per response exceeds this (a KL explosion)
    eval_every: int = 10  # iterations between evaluations and checkpoints (also at 1, 2, 4, …)
    n_eval_prompts: int = 256  # held-out prompts of the shared evaluation
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def rloo_advantages(rewards, k):
    """Leave-one-out: b_i = (Σ_j R_j − R_i)/(k − 1) over the k responses of one prompt (rows
    grouped by prompt); A_i = R_i − b_i. Returns advantages and baselines, both (B·k,)."""
    R = rewards.view(-1, k)
    baseline = (R.sum(1, keepdim=True) - R) / (k - 1)
    return (R - baseline).flatten(), baseline.flatten()


def baselined_advantages(rewards, k, baseline):
    """A_i = R_i − b_i with b_i leave-one-out (rloo_advantages), the batch mean (one number for
    every response, the decks' V) or 0 (REINFORCE without a baseline)."""
    if baseline == "loo":
        return rloo_advantages(rewards, k)
    b = torch.zeros_like(rewards)
    if baseline == "mean":  # the whole batch's (under torchrun: of every rank's share)
        b += c.all_mean(rewards.mean())
    return rewards - b, b


def rloo_loss(seq_logprobs, old_seq_logprobs, advantages, clip):
    """−mean_i min(ρ_i A_i, clip(ρ_i, 1±ε) A_i), sequence ratio ρ_i = π_θ(y_i)/π_old(y_i).
    At ρ = 1 (the first minibatch of the first pass) its gradient is REINFORCE's:
    −mean_i A_i ∇log π_θ(y_i|x)."""
    ratio = torch.exp(seq_logprobs - old_seq_logprobs)
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    return losses.mean()


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES)
    if cfg.k < 2:
        c.die(f"--k {cfg.k}: the baseline needs at least 2 responses per prompt")
    if cfg.batch_size * cfg.k % cfg.minibatch_size:
        c.die(f"--batch-size × --k ({cfg.batch_size * cfg.k}) must be a multiple of"
              " --minibatch-size")
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir, rm_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    c.require(sft_dir, "sft.py", c.build_args(cfg))
    c.require(rm_dir, "reward_model.py", c.build_args(cfg), built_from=[sft_dir])
    out_dir = os.path.join(cfg.out, "rloo")
    c.start_stage(out_dir)

    # the models: policy and reference from SFT, the reward model; no critic
    policy = c.load_model(sft_dir).to(device).train()
    c.check_positions(policy, cfg)
    ref = c.load_model(sft_dir).to(device).eval().requires_grad_(False)
    rm = c.load_reward_model(rm_dir, policy).to(device)
    enc = c.tokenizer(policy.config.bpe_ranks)
    gold = c.gold_fn(cfg.gold, cfg.out)  # what the evaluation (and --reward gold) scores by
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5, weight_decay=0.0)

    # data: training prompts, held-out prompts for the shared evaluation
    train_prompts = c.prompts("train", enc)
    eval_prompts = c.prompts("eval", enc, cfg.n_eval_prompts)
    fields = c.run_key("rloo", cfg, Config())
    results = c.Results(os.path.join(cfg.out, "results.jsonl"), out_dir, fields)
    ckpt = c.Checkpoint(out_dir, policy)

    def evaluate(step):
        ev = c.evaluate(policy, ref, enc, eval_prompts, cfg.max_new_tokens, rm, gold=gold)
        return results.add(ev, step, final=step == cfg.steps)

    before = evaluate(0)
    logger = c.Logger(out_dir, cfg.steps,
                      evaluates=lambda s: c.evaluates_at(s, cfg.eval_every, cfg.steps))
    for step in range(1, cfg.steps + 1):
        # 1. sample a group of k responses to each prompt of a batch (rows grouped by prompt;
        # under torchrun a rank samples for its share of the prompts)
        idx = c.share(torch.randint(len(train_prompts), (cfg.batch_size,)).tolist())
        with torch.no_grad(), c.autocast(device):
            tokens, mask = c.sample(policy, [train_prompts[i] for i in idx for _ in range(cfg.k)],
                                    cfg.max_new_tokens, cfg.temperature)
            P, mask = tokens.shape[1] - mask.shape[1], mask.float()
            # 2. score: r_φ(x, y), or the gold reward
            score = c.score_responses(cfg.reward, rm, enc, tokens, gold)
            # log-probs of the sampling policy and of the reference
            old_logprobs = c.rollout_logprobs(policy, tokens, P, cfg.minibatch_size,
                                              cfg.temperature)
            ref_logprobs = c.rollout_logprobs(ref, tokens, P, cfg.minibatch_size,
                                              cfg.temperature)
        # 3. reward = score − β·sequence KL
        kl = c.sequence_kl(old_logprobs, ref_logprobs, mask)  # (B·k,)
        c.check_kl(kl, cfg.max_kl, step, ckpt)
        rewards = c.sequence_reward(score, kl, cfg.beta)
        # 4. leave-one-out advantages (--baseline: the batch mean, or none)
        advantages, baseline = baselined_advantages(rewards, cfg.k, cfg.baseline)
        old_seq_logprobs = c.response_logprobs(old_logprobs, mask)

        # 5. update: REINFORCE on whole responses (clipped ratio on later passes)
        stats = collections.defaultdict(list)
        for epoch in range(cfg.ppo_epochs):
            for s in c.minibatches(len(tokens), cfg.minibatch_size, epoch):
                with c.autocast(device):
                    logprobs, entropy = c.token_logprobs(policy, tokens[s], P, cfg.temperature)
                seq_logprobs = c.response_logprobs(logprobs, mask[s])  # log π(y|x), (mb,)
                loss = rloo_loss(seq_logprobs, old_seq_logprobs[s], advantages[s], cfg.clip)
                c.optimizer_step(opt, loss, policy.parameters(), step, ckpt)
                stats["pg_loss"].append(loss.item())
                stats["entropy"].append(c.masked_mean(entropy, mask[s]).item())
                for k, v in c.update_stats(seq_logprobs, old_seq_logprobs[s], torch.ones_like(
                        seq_logprobs), cfg.clip).items():  # one action per response
                    stats[k].append(v)

        # 6. log; evaluate and checkpoint every eval_every steps
        metrics = {"score": score.mean().item(), "kl": kl.mean().item(),
                   "non_score_reward": (rewards - score).mean().item(),
                   "length": mask.sum(1).mean().item(), "baseline": baseline.mean().item(),
                   "adv_std": advantages.std().item(), **c.mean_stats(stats)}
        if c.evaluates_at(step, cfg.eval_every, cfg.steps):
            ev = evaluate(step)
            metrics.update({f"eval_{k}": ev[k] for k in ("gold", "proxy", "kl")})
            ckpt.save(policy, step)
            print("  sample:", ev["samples"][0][:150])
            c.warn_if_collapsed(metrics)
        logger.log(step, **metrics)

    # final: results, samples before/after, plots
    c.finish_rl(cfg, out_dir, results, before, ev, f"RLOO policy ({fields['run']})",
                [("score", "eval_proxy", "eval_gold"), ("kl", "eval_kl"), "entropy", "adv_std"],
                [sft_dir, rm_dir])


if __name__ == "__main__":
    c.run(main)
