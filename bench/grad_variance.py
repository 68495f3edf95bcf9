"""bench/grad_variance.py: what a baseline does to the variance of the policy gradient.

Deck 001 and deck 004: REINFORCE's gradient estimate is unbiased but noisy; subtracting a
baseline keeps its expectation and lowers its variance. Measured at one fixed policy, π_SFT (the
policy every RL run starts from), on the same samples for every estimator: --batches batches of
--prompts prompts × --k responses each; per batch and estimator one gradient g_m of all the
policy's parameters; then the trace of their covariance, tr Σ = E‖g − μ‖², and the
noise-to-signal ratio tr Σ / ‖μ‖² of one batch's gradient (scale-free: PPO's loss is a mean over
tokens, the others a mean over responses, so only the ratio compares all four):
  reinforce  −mean_i R_i log π(y_i|x)                       (no baseline)
  mean       −mean_i (R_i − R̄) log π(y_i|x)                 (one baseline: the batch mean)
  loo        −mean_i (R_i − b_i) log π(y_i|x)               (rloo.py: the other k − 1's mean)
  ppo-gae    −mean_t A_t log π(y_t|x, y_<t), A_t GAE (γ 1, λ 0.95) with the critic PPO starts
             from (r_φ's head on every prefix); not whitened (whitening rescales by a batch
             statistic)
R = r_φ(x, y): the KL penalty is 0 at π = π_ref. Also tr Σ from each half of the batches, to
show how far the estimate itself moves. Writes one row per estimator to <out>/grad_variance.jsonl.
Run: python bench/grad_variance.py   (≈ 2 min on a 2-core AVX512-BF16 CPU, bf16, once out/sft
                                       and out/reward_model exist)
     python bench/grad_variance.py --redraw --results docs/grad_variance.jsonl   (the table)
"""
import os, sys
from dataclasses import dataclass

import torch
from transformers import GPT2ForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
from experiments.lecture import variance_table  # noqa: E402
from ppo import critic_values, gae, token_rewards  # noqa: E402  (what is measured)
from rloo import rloo_advantages  # noqa: E402

ESTIMATORS = ["reinforce", "mean", "loo", "ppo-gae"]


@dataclass
class Config:
    out: str = "out"  # reads out/sft, out/reward_model; writes out/grad_variance.jsonl
    batches: int = 24  # independent batches from the fixed policy (≥ 4: two halves of ≥ 2)
    prompts: int = 16  # prompts per batch
    k: int = 4  # responses per prompt (samples per batch: prompts · k, as rloo.py's default)
    lam: float = 0.95  # GAE λ of the ppo-gae estimator (ppo.py's default)
    max_new_tokens: int = 40  # response length cap
    redraw: bool = False  # measure nothing: print the table of --results
    results: str = ""  # the rows to print with --redraw (default: <out>/grad_variance.jsonl)
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def gradient_noise(total, total_sq, m):
    """From Σ_m g_m (a vector) and Σ_m ‖g_m‖² of m independent gradient estimates: the trace of
    their covariance tr Σ = (Σ‖g_m‖² − m‖ḡ‖²)/(m − 1), and ‖μ‖² estimated without bias,
    ‖ḡ‖² − tr Σ/m (‖ḡ‖² alone is inflated by the noise)."""
    mean_sq = (total / m).pow(2).sum().item()
    trace = (total_sq - m * mean_sq) / (m - 1)
    return trace, mean_sq - trace / m


def estimator_losses(score, seq_logprobs, token_logprobs, gae_advantages, mask, k):
    """The four surrogate losses whose gradients are the estimators (advantages detached)."""
    loo, _ = rloo_advantages(score, k)
    return {"reinforce": -(score * seq_logprobs).mean(),
            "mean": -((score - score.mean()) * seq_logprobs).mean(),
            "loo": -(loo * seq_logprobs).mean(),
            "ppo-gae": -c.masked_mean(gae_advantages * token_logprobs, mask)}


def main():
    cfg = c.parse_config(Config, __doc__)
    if cfg.redraw:
        rows = c.read_jsonl(cfg.results or os.path.join(cfg.out, "grad_variance.jsonl"))
        print("\n".join(variance_table(rows)))
        return
    if cfg.batches < 4:
        c.die(f"--batches {cfg.batches}: each half of the batches needs at least 2")
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir, rm_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    c.require(sft_dir, "sft.py", ["--out", cfg.out])
    c.require(rm_dir, "reward_model.py", ["--out", cfg.out], built_from=[sft_dir])
    policy = c.load_model(sft_dir).to(device).eval()  # fixed: never updated
    rm = c.load_reward_model(rm_dir, policy).to(device)
    critic = c.load_model(rm_dir, GPT2ForSequenceClassification).to(device).eval()
    enc = c.tokenizer(policy.config.bpe_ranks)
    params = [p for p in policy.parameters() if p.requires_grad]
    prompts = c.prompts("train", enc)
    print(f"{cfg.batches} batches of {cfg.prompts * cfg.k} samples, {len(ESTIMATORS)} gradients"
          f" each: ≈ {cfg.batches * 5 / 60:.0f} min on a 2-core bf16 CPU (fp32: ≈ 5× more)",
          flush=True)
    # per estimator and half of the batches: Σ g and Σ ‖g‖²
    sums = {e: [[0.0, 0.0], [0.0, 0.0]] for e in ESTIMATORS}
    for m in range(cfg.batches):
        idx = torch.randint(len(prompts), (cfg.prompts,)).tolist()
        with torch.no_grad(), c.autocast(device):
            tokens, mask = c.sample(policy, [prompts[i] for i in idx for _ in range(cfg.k)],
                                    cfg.max_new_tokens)
            P, mask = tokens.shape[1] - mask.shape[1], mask.float()
            score = c.reward(rm, tokens).float()
            values = critic_values(critic, tokens, P, len(tokens))
        with c.autocast(device):
            logprobs, _ = c.token_logprobs(policy, tokens, P)
        logprobs = logprobs.float()
        # at π = π_ref the per-token KL penalty is 0: the score on the last token only
        rewards = token_rewards(score, logprobs.detach(), logprobs.detach(), mask, 0.0)
        advantages, _ = gae(rewards, values, mask, 1.0, cfg.lam)
        losses = estimator_losses(score, c.response_logprobs(logprobs, mask), logprobs,
                                  advantages, mask, cfg.k)
        for e, loss in losses.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            g = torch.cat([x.flatten() for x in grads]).float()
            half = sums[e][m % 2]
            half[0], half[1] = half[0] + g, half[1] + g.pow(2).sum().item()
        print(f"batch {m + 1}/{cfg.batches}: mean score {score.mean():.3f}", flush=True)
    path = os.path.join(cfg.out, "grad_variance.jsonl")
    rows = []
    for e in ESTIMATORS:
        (t0, s0), (t1, s1) = sums[e]
        m0, m1 = (cfg.batches + 1) // 2, cfg.batches // 2
        trace, signal = gradient_noise(t0 + t1, s0 + s1, cfg.batches)
        halves = [gradient_noise(t0, s0, m0)[0], gradient_noise(t1, s1, m1)[0]]
        rows.append({"run": f"grad-variance {e}", "estimator": e,
                     "samples": cfg.prompts * cfg.k, "batches": cfg.batches, "trace": trace,
                     "signal": signal, "noise_to_signal": trace / signal if signal > 0 else None,
                     "trace_halves": halves, "device": device.type,
                     "precision": os.environ.get(c.PRECISION_ENV, ""), "seed": cfg.seed,
                     "pipeline": c.pipeline_at(cfg.out)})
    for r in rows:  # a rerun replaces the estimator's row
        c.replace_rows(path, r["run"], [r])
    print("\n".join(variance_table(rows)))
    print(f"wrote {path}")


if __name__ == "__main__":
    c.run(main)
