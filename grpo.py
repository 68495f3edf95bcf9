"""grpo.py: Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath) against r_φ.

RLOO's family: the action is the whole response. The models: the policy π_θ (trained, from
SFT), the reward model r_φ and the reference π_ref (frozen); no critic. Each iteration:
1. sample a group of k responses to each prompt of a batch; 2. score them with r_φ;
3. the KL goes into the loss (step 5), or with --kl-in reward into R_i as in rloo.py;
4. advantage Â_i = (R_i − mean_k R)/(std_k R + ε), the same for each token of response i
   (--no-scale-std: Dr. GRPO, Liu et al. 2025); a group of equal rewards gets Â = 0;
5. update on PPO's per-token clipped ratio objective + β·k3 (π_ref/π − log(π_ref/π) − 1);
6. log, and every few steps evaluate on held-out prompts.
--reward gold optimises the gold reward itself (the counterpart of PPO-GT).

Left out: a penalty for responses that never stop.
Run: python grpo.py          (builds out/sft and out/reward_model first if they are missing)
     torchrun --nproc_per_node N grpo.py   (N data-parallel ranks: docs/beyond.md)
"""
import collections, os
from dataclasses import dataclass

import torch

import common as c


CHOICES = {"reward": ["model", "gold"], "gold": c.GOLD_NAMES,  # flags with a fixed set of values
           "kl_in": ["loss", "reward"], "loss_norm": ["sequence", "constant"]}


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft, out/reward_model; writes out/grpo
    reward: str = "model"  # what to maximise: 'model' = learned r_φ, 'gold' = the gold
    gold: str = "vader"  # the gold: vader, or learned (<out>/gold, docs/goodhart_design.md)
    beta: float = 0.05  # KL coefficient β
    k: int = 4  # responses per prompt (≥ 2: each one's baseline comes from the others)
    steps: int = 100  # iterations (one batch of samples and its update each)
    batch_size: int = 16  # prompts per iteration (k responses each)
    minibatch_size: int = 16  # responses per gradient step
    ppo_epochs: int = 1  # passes over each batch (ratio 1 on the first minibatch)
    lr: float = 4e-5  # AdamW learning rate
    clip: float = 0.2  # ε of the clipped ratio (only matters if ppo_epochs > 1)
    temperature: float = 1.0  # sampling temperature (log-probs use the same)
    max_new_tokens: int = 40  # response length cap
    max_kl: float = 100.0  # stop if the batch KL per response exceeds this (a KL explosion)
    eval_every: int = 10  # iterations between evaluations and checkpoints (also at 1, 2, 4, …)
    n_eval_prompts: int = 256  # held-out prompts of the shared evaluation
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32
    kl_in: str = "loss"  # where the KL goes: 'loss' (GRPO, k3 per token) or 'reward' (as RLOO)
    scale_std: bool = True  # divide advantages by the group's std (GRPO); off: Dr. GRPO
    loss_norm: str = "sequence"  # 'sequence' (GRPO: mean per response) or 'constant' (Dr. GRPO)


def grpo_advantages(rewards, k, scale_std, eps=1e-4):
    """Â_i = (r_i − mean_G r) / (std_G r + ε) over the k responses of one prompt (rows grouped
    by prompt; std with Bessel's correction, as TRL); scale_std=False: r_i − mean_G r (Dr. GRPO).
    Returns advantages (B·k,) and whether each response's group had zero reward spread."""
    R = rewards.view(-1, k)
    std = R.std(1, keepdim=True)
    advantages = R - R.mean(1, keepdim=True)
    if scale_std:
        advantages = advantages / (std + eps)
    return advantages.flatten(), (std == 0).expand_as(R).flatten()


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip, beta, loss_norm,
              max_new_tokens):
    """Per token: max(−Â·ρ_t, −Â·clip(ρ_t, 1±ε)) + β·k3_t, with the ratio
    ρ_t = π_θ(y_t)/π_old(y_t) (GRPO, eq. 3 of Shao et al., negated). 'sequence': GRPO's mean
    over each response's tokens, then over responses, so a token of a short response weighs
    more (the length bias Dr. GRPO removes); 'constant': every response's token sum divided by
    the same number, k·max_new_tokens per prompt (Dr. GRPO). β = 0 leaves the KL out of the
    loss (--kl-in reward). With one pass and one minibatch the ratio is exactly 1: REINFORCE
    with the group baseline. Returns the loss and k3 (B, T)."""
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages[:, None]  # (B, 1): the same advantage for every token of a response
    pg = torch.max(-A * ratio, -A * ratio.clamp(1 - clip, 1 + clip))  # (B, T)
    kl = c.kl_estimate(logprobs, ref_logprobs, "k3")  # (B, T), ≥ 0
    per_token = (pg + beta * kl) * mask
    if loss_norm == "sequence":
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        loss = per_token.sum() / (len(mask) * max_new_tokens)
    return loss, kl


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
    out_dir = os.path.join(cfg.out, "grpo")
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
    fields = c.run_key("grpo", cfg, Config())
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
        # 3. the KL: per token in the loss (step 5), or in the reward = score − β·sequence KL
        kl = c.sequence_kl(old_logprobs, ref_logprobs, mask)  # (B·k,)
        c.check_kl(kl, cfg.max_kl, step, ckpt)
        rewards = c.sequence_reward(score, kl, cfg.beta if cfg.kl_in == "reward" else 0.0)
        # 4. group-relative advantages
        advantages, zero_std = grpo_advantages(rewards, cfg.k, cfg.scale_std)
        loss_beta = cfg.beta if cfg.kl_in == "loss" else 0.0

        # 5. update: per-token clipped ratio objective + β·k3 in the loss
        stats = collections.defaultdict(list)
        for epoch in range(cfg.ppo_epochs):
            for s in c.minibatches(len(tokens), cfg.minibatch_size, epoch):
                with c.autocast(device):
                    logprobs, entropy = c.token_logprobs(policy, tokens[s], P, cfg.temperature)
                loss, kl_k3 = grpo_loss(logprobs, old_logprobs[s], ref_logprobs[s], advantages[s],
                                        mask[s], cfg.clip, loss_beta, cfg.loss_norm,
                                        cfg.max_new_tokens)
                c.optimizer_step(opt, loss, policy.parameters(), step, ckpt)
                stats["pg_loss"].append(loss.item())
                stats["entropy"].append(c.masked_mean(entropy, mask[s]).item())
                for k, v in c.update_stats(logprobs, old_logprobs[s], mask[s], cfg.clip).items():
                    stats[k].append(v)
                stats["kl_k3"].append(c.masked_mean(kl_k3, mask[s]).item())

        # 6. log; evaluate and checkpoint every eval_every steps
        metrics = {"score": score.mean().item(), "kl": kl.mean().item(),
                   "non_score_reward": (rewards - score).mean().item(),
                   "length": mask.sum(1).mean().item(),
                   "frac_zero_std": zero_std.float().mean().item(),
                   "adv_std": advantages.std().item(), **c.mean_stats(stats)}
        if c.evaluates_at(step, cfg.eval_every, cfg.steps):
            ev = evaluate(step)
            metrics.update({f"eval_{k}": ev[k] for k in ("gold", "proxy", "kl")})
            ckpt.save(policy, step)
            print("  sample:", ev["samples"][0][:150])
            c.warn_if_collapsed(metrics)
        logger.log(step, **metrics)

    # final: results, samples before/after, plots
    c.finish_rl(cfg, out_dir, results, before, ev, f"GRPO policy ({fields['run']})",
                [("score", "eval_proxy", "eval_gold"), ("kl", "eval_kl"), "entropy",
                 ("kl_k3", "frac_zero_std")], [sft_dir, rm_dir])


if __name__ == "__main__":
    c.run(main)
