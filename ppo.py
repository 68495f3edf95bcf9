"""ppo.py: Step 3 of RLHF: PPO against the reward model, max E[r_φ(x, y)] − β·KL(π‖π_ref).

The four models of the lecture: the policy π_θ (trained, from SFT), the reference π_ref (frozen
SFT), the critic V_ψ (trained, from the reward model) and the reward model r_φ (frozen).
Each iteration: 1. sample responses to a batch of prompts; 2. score them with r_φ;
3. per-token KL penalty −β(log π − log π_ref), score added at the last response token;
4. values, GAE advantages (γ = 1, λ = 0.95) and returns, advantages whitened over real tokens;
5. several epochs of minibatches: clipped ratio objective, clipped value loss, optional entropy
bonus and PPO-ptx term; 6. log, and every few steps evaluate on held-out prompts.
--reward gold optimises the gold reward itself (the DPO paper's PPO-GT; deck 002 notes that it
does not reach the best reward, and here too it stays under r_φ's methods: docs/results.md).

Left out: reward whitening, a penalty for responses that never stop, separate sampling and
training processes. Minibatches keep their rows across epochs (only their order is shuffled) so
that the first minibatch of a rollout is bit-identical to the rollout's pass.
Run: python ppo.py          (builds out/sft and out/reward_model first if they are missing)
     torchrun --nproc_per_node N ppo.py   (N data-parallel ranks: docs/beyond.md)
"""
import collections, os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2ForSequenceClassification

import common as c


CHOICES = {"reward": ["model", "gold"], "gold": c.GOLD_NAMES}  # flags with a fixed set of values
LM_TOKENS = 64  # tokens per IMDb text window of the language-model loss (PPO-ptx, the tax)
N_TAX_TEXTS = 256  # held-out IMDb texts on which the alignment tax is measured


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft, out/reward_model; writes out/ppo
    reward: str = "model"  # what to maximise: 'model' = learned r_φ, 'gold' = the gold (PPO-GT)
    gold: str = "vader"  # the gold: vader, or learned (<out>/gold, docs/goodhart_design.md)
    beta: float = 0.05  # KL penalty coefficient β (initial value if --target-kl is set)
    target_kl: float = 0.0  # adaptive KL controller: target KL per response (nats); 0 = fixed β
    horizon: int = 10000  # adaptive KL controller horizon (responses)
    steps: int = 40  # PPO iterations (one rollout and its update each); gold is flat after ~20
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 16  # responses per gradient step
    ppo_epochs: int = 2  # passes over each rollout
    lr: float = 1e-4  # AdamW learning rate of policy and critic
    clip: float = 0.2  # ε of the clipped ratio objective
    vf_clip: float = 0.2  # clipping range of the value loss
    vf_coef: float = 0.1  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    ptx_coef: float = 0.0  # PPO-ptx: weight of the language-model loss on IMDb text
    gamma: float = 1.0  # discount γ
    lam: float = 0.95  # GAE λ
    temperature: float = 1.0  # sampling temperature (log-probs use the same)
    max_new_tokens: int = 40  # response length cap
    max_kl: float = 100.0  # stop if the rollout KL per response exceeds this (a KL explosion)
    eval_every: int = 10  # iterations between evaluations and checkpoints (also at 1, 2, 4, …)
    n_eval_prompts: int = 256  # held-out prompts of the shared evaluation
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def degenerate(cfg):
    """Refused at parse time: the adaptive controller moves β by up to 20%·n/H per rollout of n
    responses; a horizon H below n moves it by more, and below n/5 turns β negative."""
    if cfg.horizon < cfg.batch_size:
        return f"--horizon {cfg.horizon} is below --batch-size {cfg.batch_size}: the adaptive" \
            " KL controller would move β by over 20% a rollout (below 1/5 of it: turn it < 0)"


def whiten(x, mask):
    """Zero mean, unit variance over the real tokens only (padding would skew both), of the
    whole batch (under torchrun: every rank's share of it)."""
    mean = c.masked_mean(x, mask, all_ranks=True)
    var = c.masked_mean((x - mean) ** 2, mask, all_ranks=True)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_rewards(score, logprobs, ref_logprobs, mask, beta):
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
    return c.masked_mean(losses, mask)


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


def adaptive_beta(beta, kl, target, n, horizon):
    """Adaptive KL controller (Ziegler et al. 2019):
    β ← β·(1 + clip(KL/target − 1, ±0.2)·n/H), after a rollout of n responses with mean KL;
    H = horizon."""
    return beta * (1 + max(-0.2, min(0.2, kl / target - 1)) * n / horizon)


def critic_values(critic, tokens, n_prompt, size):
    """V(x, y_<t) for every response position t: the scalar head on each hidden state (B, T),
    in minibatches of `size` rows."""
    return torch.cat([critic.score(c.forward(critic, tokens[s])[:, n_prompt - 1:-1]).squeeze(-1)
                      for s in c.minibatches(len(tokens), size)]).float()


def lm_batch(enc, split, idx, max_len, device, closed=False):
    """IMDb text windows for the language-model loss: the first max_len tokens of each text (the
    alignment tax), or (closed: PPO-ptx's) cut after their last full sentence and closed with
    end-of-text as sft.py's openings are: windows that never end would teach the policy never
    to stop, and its responses would run to the length cap."""
    texts = [c.imdb()[split][i] for i in idx]
    ids = [x[:max_len] for x in enc.encode_ordinary_batch([t[:1000] for t in texts])]
    if closed:
        ends = sentence_ends(enc)
        cuts = [max([j + 1 for j, t in enumerate(x) if t in ends], default=0) for x in ids]
        ids = [x[:cut] + [enc.eot_token] if cut else x for x, cut in zip(ids, cuts)]
    tokens, _ = c.collate([[enc.eot_token]] * len(ids), ids, enc.eot_token + 1)
    return tokens.to(device)


def sentence_ends(enc):
    """The BPE ranks whose text ends a sentence (., ! or ?, as in sft.py's openings)."""
    return {i for i in range(enc.eot_token)
            if enc.decode_single_token_bytes(i).rstrip()[-1:] in (b".", b"!", b"?")}


def ptx_loss(policy, enc, n, device):
    """PPO-ptx's term: the language-model loss on n random IMDb training texts, each closed with
    end-of-text after its last full sentence (lm_batch)."""
    idx = torch.randint(len(c.imdb()["train"]), (n,)).tolist()
    with c.autocast(device):
        return lm_loss(policy, lm_batch(enc, "train", idx, LM_TOKENS, device, closed=True))


@torch.no_grad()
def alignment_tax(policy, tokens, device):
    """The policy's language-model loss on held-out IMDb text (it rises as RL moves away)."""
    with c.autocast(device):
        return lm_loss(policy, tokens).item()


def lm_loss(model, tokens):
    """Mean next-token loss (nats/token) on real tokens."""
    logits = model.lm_head(c.forward(model, tokens)[:, :-1]).float()
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == model.config.pad_token_id, -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES, check=degenerate)
    if cfg.batch_size % cfg.minibatch_size:
        c.die(f"--batch-size {cfg.batch_size} must be a multiple of --minibatch-size")
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir, rm_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    c.require(sft_dir, "sft.py", c.build_args(cfg))
    c.require(rm_dir, "reward_model.py", c.build_args(cfg), built_from=[sft_dir])
    out_dir = os.path.join(cfg.out, "ppo")
    c.start_stage(out_dir)

    # the four models: policy and reference from SFT, critic and reward model from r_φ
    policy = c.load_model(sft_dir).to(device).train()
    c.check_positions(policy, cfg)
    ref = c.load_model(sft_dir).to(device).eval().requires_grad_(False)
    rm = c.load_reward_model(rm_dir, policy).to(device)
    critic = c.load_model(rm_dir, GPT2ForSequenceClassification).to(device).train()
    enc = c.tokenizer(policy.config.bpe_ranks)
    gold = c.gold_fn(cfg.gold, cfg.out)  # what the evaluation (and --reward gold) scores by
    params = [*policy.parameters(), *critic.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)

    # data: training prompts, held-out prompts for the shared evaluation
    train_prompts = c.prompts("train", enc)
    eval_prompts = c.prompts("eval", enc, cfg.n_eval_prompts)
    fields = c.run_key("ppo", cfg, Config())
    results = c.Results(os.path.join(cfg.out, "results.jsonl"), out_dir, fields)
    ckpt = c.Checkpoint(out_dir, policy)
    tax_batch = lm_batch(enc, "valid", range(N_TAX_TEXTS), LM_TOKENS, device)

    def evaluate(step):
        ev = c.evaluate(policy, ref, enc, eval_prompts, cfg.max_new_tokens, rm, gold=gold)
        ev["lm_loss"] = alignment_tax(policy, tax_batch, device)
        return results.add(ev, step, final=step == cfg.steps)

    before = evaluate(0)
    logger = c.Logger(out_dir, cfg.steps,
                      evaluates=lambda s: c.evaluates_at(s, cfg.eval_every, cfg.steps))
    beta = cfg.beta
    for step in range(1, cfg.steps + 1):
        # 1. sample a response to each prompt of a batch (under torchrun: of a rank's share)
        idx = c.share(torch.randint(len(train_prompts), (cfg.batch_size,)).tolist())
        with torch.no_grad(), c.autocast(device):
            tokens, mask = c.sample(policy, [train_prompts[i] for i in idx],
                                    cfg.max_new_tokens, cfg.temperature)
            P, mask = tokens.shape[1] - mask.shape[1], mask.float()
            # 2. score: r_φ(x, y), or the gold reward (PPO-GT)
            score = c.score_responses(cfg.reward, rm, enc, tokens, gold)
            # log-probs of the sampling policy and of the reference; the critic's values
            old_logprobs = c.rollout_logprobs(policy, tokens, P, cfg.minibatch_size,
                                              cfg.temperature)
            ref_logprobs = c.rollout_logprobs(ref, tokens, P, cfg.minibatch_size,
                                              cfg.temperature)
            old_values = critic_values(critic, tokens, P, cfg.minibatch_size)
        # 3. per-token reward: −β·(log π − log π_ref) on each token, the score on the last
        kl = c.sequence_kl(old_logprobs, ref_logprobs, mask)  # (B,)
        c.check_kl(kl, cfg.max_kl, step, ckpt)
        rewards = token_rewards(score, old_logprobs, ref_logprobs, mask, beta)
        # 4. GAE advantages (whitened) and returns
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)

        # 5. update: PPO epochs over minibatches, policy and critic together
        stats = collections.defaultdict(list)
        for epoch in range(cfg.ppo_epochs):
            for s in c.minibatches(len(tokens), cfg.minibatch_size, epoch):
                with c.autocast(device):
                    logprobs, entropy = c.token_logprobs(policy, tokens[s], P, cfg.temperature)
                    values = critic_values(critic, tokens[s], P, cfg.minibatch_size)
                pg_loss = ppo_policy_loss(logprobs, old_logprobs[s], advantages[s], mask[s],
                                          cfg.clip)
                vf_loss = value_loss(values, old_values[s], returns[s], mask[s], cfg.vf_clip)
                ent = c.masked_mean(entropy, mask[s])
                loss = ppo_total_loss(pg_loss, vf_loss, ent, cfg.vf_coef, cfg.ent_coef)
                if cfg.ptx_coef:  # PPO-ptx: + γ_ptx · the language-model loss on IMDb text
                    loss = loss + cfg.ptx_coef * ptx_loss(policy, enc, cfg.minibatch_size, device)
                c.optimizer_step(opt, loss, params, step, ckpt, weight=mask[s].sum())
                stats["pg_loss"].append(pg_loss.item())
                stats["entropy"].append(ent.item())
                for k, v in c.update_stats(logprobs, old_logprobs[s], mask[s], cfg.clip).items():
                    stats[k].append(v)
                stats["vf_loss"].append(vf_loss.item())

        # 6. log; evaluate and checkpoint every eval_every steps
        metrics = {"score": score.mean().item(), "kl": kl.mean().item(),
                   "non_score_reward": (rewards.sum(1) - score).mean().item(),
                   "length": mask.sum(1).mean().item(), "beta": beta, **c.mean_stats(stats)}
        if c.evaluates_at(step, cfg.eval_every, cfg.steps):
            ev = evaluate(step)
            metrics.update({f"eval_{k}": ev[k] for k in ("gold", "proxy", "kl")})
            ckpt.save(policy, step)
            print("  sample:", ev["samples"][0][:150])
            c.warn_if_collapsed(metrics)
        logger.log(step, **metrics)
        if cfg.target_kl:  # the adaptive KL controller sets β for the next batch
            beta = adaptive_beta(beta, c.all_mean(kl.mean()), cfg.target_kl, cfg.batch_size,
                                 cfg.horizon)

    # final: results, samples before/after, plots
    c.finish_rl(cfg, out_dir, results, before, ev, f"PPO policy ({fields['run']})",
                [("score", "eval_proxy", "eval_gold"), ("kl", "eval_kl"), "entropy", "clipfrac",
                 "vf_loss"], [sft_dir, rm_dir])
    print(f"LM loss on IMDb text (the alignment tax): {before['lm_loss']:.3f} →"
          f" {ev['lm_loss']:.3f}")


if __name__ == "__main__":
    c.run(main)
