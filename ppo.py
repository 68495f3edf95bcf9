"""ppo.py: Step 3 of RLHF: PPO against the reward model, max E[r_φ(x, y)] − β·KL(π‖π_ref).

The four models of the lecture: the policy π_θ (trained, from SFT), the reference π_ref (frozen
SFT), the critic V_ψ (trained, from the reward model) and the reward model r_φ (frozen).
Each iteration: 1. sample responses to a batch of prompts; 2. score them with r_φ;
3. per-token KL penalty −β(log π − log π_ref), score added at the last response token;
4. values, GAE advantages (γ = 1, λ = 0.95) and returns, advantages whitened over real tokens;
5. several epochs of minibatches: clipped ratio objective, clipped value loss, optional entropy
bonus and PPO-ptx term; 6. log, and every few steps evaluate on held-out prompts.
--reward gold optimises the gold reward itself (the DPO paper's PPO-GT upper reference).

Left out: reward whitening, a penalty for responses that never stop, separate sampling and
training processes, multi-GPU. Minibatches keep their rows across epochs (only their order is
shuffled) so that the first minibatch of a rollout is bit-identical to the rollout's pass.
Run: python ppo.py          (builds out/sft and out/reward_model first if they are missing)
"""
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2ForSequenceClassification

import common as c


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft, out/reward_model; writes out/ppo
    reward: str = "model"  # what to maximise: 'model' = learned r_φ, 'gold' = VADER (PPO-GT)
    beta: float = 0.05  # KL penalty coefficient β (initial value if --target-kl is set)
    target_kl: float = 0.0  # adaptive KL controller: target KL per response (nats); 0 = fixed β
    horizon: int = 10000  # adaptive KL controller horizon (responses)
    steps: int = 100  # PPO iterations (one rollout and its update each)
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 16  # responses per gradient step
    ppo_epochs: int = 4  # passes over each rollout
    lr: float = 1e-4  # AdamW learning rate of policy and critic
    clip: float = 0.2  # ε of the clipped ratio objective
    vf_clip: float = 0.2  # clipping range of the value loss
    vf_coef: float = 0.1  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    ptx_coef: float = 0.0  # PPO-ptx: weight of the language-model loss on IMDb text
    gamma: float = 1.0  # discount γ
    lam: float = 0.95  # GAE λ
    temperature: float = 1.0  # sampling temperature (log-probs use the same)
    max_new_tokens: int = 48  # response length cap
    max_kl: float = 100.0  # stop if the rollout KL per response exceeds this (a KL explosion)
    eval_every: int = 10  # iterations between held-out evaluations and checkpoints
    n_eval_prompts: int = 256  # held-out prompts of the shared evaluation
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def whiten(x, mask):
    """Zero mean, unit variance over the real tokens only (padding would skew both)."""
    mean = c.masked_mean(x, mask)
    var = c.masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def kl_penalised_rewards(score, logprobs, ref_logprobs, mask, beta):
    """r_t = −β(log π(y_t) − log π_ref(y_t)) on each response token; + r_φ(x, y) on the last
    one."""
    rewards = -beta * (logprobs - ref_logprobs) * mask  # (B, T)
    last = mask.sum(1).long() - 1  # index of each response's last real token
    rewards[torch.arange(len(score)), last] += score
    return rewards


def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation: δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1};
    V = 0 after the last real token. Returns advantages and returns (A + V), both (B, T).
    Slides: the one-step advantage δ_t (λ = 0) and the Monte-Carlo return (λ = 1); GAE mixes
    them, and A + V is the critic's target (the λ-return), not the plain return."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value, next_adv = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t], next_value = next_adv, values[:, t]
    return advantages, advantages + values


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip):
    """Clipped surrogate (Schulman et al. 2017, eq. 7), negated:
    max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = π_θ(y_t)/π_old(y_t); masked mean of tokens.
    Each token is an action (rloo.py: the whole response is one). The clip multiplies A: a slide
    that clamps ρ to (1−ε, 1) and drops A is not this objective."""
    ratio = torch.exp(logprobs - old_logprobs)
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    return c.masked_mean(losses, mask), ratio


def value_loss(values, old_values, returns, mask, clip):
    """½ max((V − R)², (V_clipped − R)²), V_clipped = V_old + clip(V − V_old, ±ε).
    Slides: plain (V − R)²; the ½ and the clip (a trust region for the critic) are PPO's
    code."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    errors = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * c.masked_mean(errors, mask)


def ppo_total_loss(pg_loss, vf_loss, entropy, vf_coef, ent_coef):
    """pg + c_v·vf − c_e·H: the policy loss, the critic's loss, and an entropy *bonus* (minus:
    minimising the loss raises the entropy)."""
    return pg_loss + vf_coef * vf_loss - ent_coef * entropy


def update_stats(logprobs, old_logprobs, mask, clip):
    """Diagnostics of one minibatch update, masked means over real tokens: the ratio
    ρ = π_θ/π_old, the fraction of tokens clipped (|ρ − 1| > ε), and
    approx_kl = (ρ − 1) − log ρ, an estimate of the KL between π_old and π_θ (PPO's trust
    region; the objective's KL is to π_ref)."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    return {"ratio": c.masked_mean(ratio, mask).item(),
            "clipfrac": c.masked_mean(((ratio - 1).abs() > clip).float(), mask).item(),
            "approx_kl": c.masked_mean(ratio - 1 - log_ratio, mask).item()}


def adaptive_beta(beta, kl, target, n, horizon):
    """Adaptive KL controller (Ziegler et al. 2019):
    β ← β·(1 + clip(KL/target − 1, ±0.2)·n/H), after a rollout of n responses with mean KL;
    H = horizon."""
    return beta * (1 + max(-0.2, min(0.2, kl / target - 1)) * n / horizon)


def critic_values(critic, tokens, n_prompt):
    """V(x, y_<t) for every response position t: the scalar head on each hidden state (B, T)."""
    return critic.score(c.forward(critic, tokens)[:, n_prompt - 1:-1]).squeeze(-1).float()


def lm_batch(enc, split, idx, max_len, device):
    """IMDb text windows for the language-model loss (PPO-ptx and the alignment tax)."""
    texts = [c.imdb()[split][i] for i in idx]
    ids = [x[:max_len] for x in enc.encode_ordinary_batch([t[:1000] for t in texts])]
    tokens, _ = c.collate([[enc.eot_token]] * len(ids), ids, enc.eot_token + 1)
    return tokens.to(device)


def lm_loss(model, tokens):
    """Mean next-token loss (nats/token) on real tokens."""
    logits = model.lm_head(c.forward(model, tokens)[:, :-1]).float()
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == model.config.pad_token_id, -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def main():
    cfg = c.parse_config(Config, __doc__, {"reward": ["model", "gold"]})
    if cfg.batch_size % cfg.minibatch_size:
        c.die(f"--batch-size {cfg.batch_size} must be a multiple of --minibatch-size")
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir, rm_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    c.require(rm_dir, "reward_model.py", ["--out", cfg.out])
    run_name = f"ppo-{'gt' if cfg.reward == 'gold' else 'rm'} β={cfg.beta}" + \
        (f" kl→{cfg.target_kl}" if cfg.target_kl else "") + \
        (f" ptx={cfg.ptx_coef}" if cfg.ptx_coef else "")
    out_dir = os.path.join(cfg.out, "ppo")

    # the four models: policy and reference from SFT, critic and reward model from r_φ
    policy = c.load_model(sft_dir).to(device).train()
    ref = c.load_model(sft_dir).to(device).eval().requires_grad_(False)
    critic = c.load_model(rm_dir, GPT2ForSequenceClassification).to(device).train()
    rm = c.load_model(rm_dir, GPT2ForSequenceClassification).to(device).eval().requires_grad_(False)
    enc = c.tokenizer(policy.config.bpe_ranks)
    opt = torch.optim.AdamW([*policy.parameters(), *critic.parameters()], lr=cfg.lr, eps=1e-5,
                            weight_decay=0.0)

    # data: training prompts, held-out prompts for the shared evaluation
    train_prompts = c.prompts("train", enc)
    eval_prompts = c.prompts("eval", enc, cfg.n_eval_prompts)
    results = os.path.join(cfg.out, "results.jsonl")
    c.drop_results(results, run_name)
    tax_batch = lm_batch(enc, "valid", range(256), 64, device)

    def evaluate(step):
        ev = c.evaluate(policy, ref, enc, eval_prompts, cfg.max_new_tokens, rm)
        with torch.no_grad(), c.autocast(device):
            ev["lm_loss"] = lm_loss(policy, tax_batch).item()
        c.append_result(results, ev, run=run_name, algo="ppo", beta=cfg.beta, step=step,
                        final=step == cfg.steps)
        return ev

    before = evaluate(0)
    logger = c.Logger(out_dir, cfg.steps)
    beta = cfg.beta
    for step in range(1, cfg.steps + 1):
        # 1. sample responses to a batch of prompts
        idx = torch.randint(len(train_prompts), (cfg.batch_size,)).tolist()
        with torch.no_grad(), c.autocast(device):
            tokens, mask = c.sample(policy, [train_prompts[i] for i in idx], cfg.max_new_tokens,
                                    cfg.temperature)
            P, mask = tokens.shape[1] - mask.shape[1], mask.float()
            # 2. score: r_φ(x, y), or the gold reward for PPO-GT
            if cfg.reward == "gold":
                score = c.gold_reward([c.decode(enc, t) for t in tokens.tolist()]).to(device)
            else:
                score = c.reward(rm, tokens)
            # old log-probs and values, in the minibatches the update will use (bit-identical)
            chunks = [slice(j, j + cfg.minibatch_size) for j in range(0, cfg.batch_size,
                                                                      cfg.minibatch_size)]
            old_logprobs = torch.cat([c.token_logprobs(policy, tokens[s], P, cfg.temperature)[0]
                                      for s in chunks])
            ref_logprobs = torch.cat([c.token_logprobs(ref, tokens[s], P, cfg.temperature)[0]
                                      for s in chunks])
            old_values = torch.cat([critic_values(critic, tokens[s], P) for s in chunks])
        # 3. per-token KL penalty, score at the last token
        kl = c.sequence_kl(old_logprobs, ref_logprobs, mask)  # (B,)
        if kl.mean() > cfg.max_kl:
            c.die(f"KL exploded ({kl.mean():.1f} nats > --max-kl {cfg.max_kl}) at step {step};"
                  f" the last good policy is in {out_dir}; raise --beta or lower --lr")
        rewards = kl_penalised_rewards(score, old_logprobs, ref_logprobs, mask, beta)
        # 4. advantages and returns
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)

        # 5. PPO epochs over minibatches
        stats = {k: [] for k in ("pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac",
                                 "ratio")}
        for epoch in range(cfg.ppo_epochs):
            for j in (torch.randperm(len(chunks)).tolist() if epoch else range(len(chunks))):
                s = chunks[j]
                mb_mask = mask[s]
                with c.autocast(device):
                    logprobs, entropy = c.token_logprobs(policy, tokens[s], P, cfg.temperature)
                    values = critic_values(critic, tokens[s], P)
                pg_loss, _ = ppo_policy_loss(logprobs, old_logprobs[s], advantages[s],
                                             mb_mask, cfg.clip)
                vf_loss = value_loss(values, old_values[s], returns[s], mb_mask, cfg.vf_clip)
                ent = c.masked_mean(entropy, mb_mask)
                loss = ppo_total_loss(pg_loss, vf_loss, ent, cfg.vf_coef, cfg.ent_coef)
                if cfg.ptx_coef:  # PPO-ptx: keep the language model of the pretraining text
                    ptx_idx = torch.randint(len(c.imdb()["train"]), (cfg.minibatch_size,))
                    with c.autocast(device):
                        loss = loss + cfg.ptx_coef * lm_loss(policy, lm_batch(
                            enc, "train", ptx_idx.tolist(), 64, device))
                if not torch.isfinite(loss):
                    c.die(f"non-finite loss at step {step}; the last good policy is in"
                          f" {out_dir}; try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*policy.parameters(), *critic.parameters()], 1.0)
                opt.step()
                for k, v in update_stats(logprobs.detach(), old_logprobs[s], mb_mask,
                                         cfg.clip).items():
                    stats[k].append(v)
                stats["pg_loss"].append(pg_loss.item())
                stats["vf_loss"].append(vf_loss.item())
                stats["entropy"].append(ent.item())

        # 6. log; evaluate and checkpoint every eval_every steps
        metrics = {"score": score.mean().item(), "kl": kl.mean().item(), "beta": beta,
                   "non_score_reward": (rewards.sum(1) - score).mean().item(),
                   "length": mask.sum(1).mean().item(),
                   **{k: sum(v) / len(v) for k, v in stats.items()}}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate(step)
            metrics.update({f"eval_{k}": ev[k] for k in ("gold", "proxy", "kl")})
            c.save_model(policy, out_dir)
            print("  sample:", ev["samples"][0][:150])
        logger.log(step, **metrics)

        # adaptive KL controller, for the next rollout
        if cfg.target_kl:
            beta = adaptive_beta(beta, kl.mean().item(), cfg.target_kl, cfg.batch_size,
                                 cfg.horizon)

    # final: samples before/after, alignment tax, plots
    after = ev
    c.write_samples(os.path.join(out_dir, "samples.txt"), before, after)
    c.write_card(out_dir, cfg, f"PPO policy ({run_name})",
                 f"{c.before_after(before, after)} on {len(eval_prompts)} held-out prompts")
    print(f"held-out: {c.before_after(before, after)} |"
          f" LM loss (alignment tax) {before['lm_loss']:.3f} → {after['lm_loss']:.3f}")
    c.plot_metrics(out_dir, [("score", "eval_proxy", "eval_gold"), ("kl", "eval_kl"),
                             "entropy", "clipfrac", "vf_loss"])
    c.plot_frontier(results, os.path.join(out_dir, "reward_vs_kl.png"))


if __name__ == "__main__":
    c.run(main)
