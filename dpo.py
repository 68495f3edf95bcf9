"""dpo.py: Direct Preference Optimisation (Rafailov et al. 2023); IPO, SLiC; online, iterative.

The KL-regularised objective max E[r] − β·KL(π‖π_ref) has the optimum
π* ∝ π_ref·exp(r/β), so r = β log π*/π_ref + const, and the Bradley–Terry reward loss
becomes a policy loss on the preference pairs of out/preferences.jsonl (the pairs that
reward_model.py learned from):
  h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)
  sigmoid (DPO): −log σ(β·h)   ipo (IPO): (h − 1/(2β))²   hinge (SLiC): max(0, 1 − βh)
1. a batch of (x, y_w, y_l) pairs (--online: sample two responses per prompt from the current
policy and let r_φ pick the chosen one, or with --judge labeler the labeler that labelled the
file: online and offline then learn from labels of one kind, as many of them; --rounds R: R
rounds of sample → label → train, each round labelling steps·batch_size/R pairs from the policy
it starts from, the iterative DPO between offline and online); 2. summed
response log-probs of the policy; those of the frozen reference were computed once before
training; 3. the loss; 4. update; 5. log the implicit rewards β·log π/π_ref of chosen and
rejected, their margin and accuracy, and evaluate.

Left out: label smoothing (cDPO), reference-free variants.
Run: python dpo.py          (builds out/preferences.jsonl first if it is missing)
     torchrun --nproc_per_node N dpo.py   (N data-parallel ranks: docs/beyond.md)
"""
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import common as c

WARMUP = 20  # steps of linear learning-rate warmup
N_VAL_PAIRS = 512  # held-out pairs for the pair accuracy of each evaluation

LOSSES = ["sigmoid", "ipo", "hinge"]
CHOICES = {"loss": LOSSES, "judge": ["model", "labeler"]}  # flags with a fixed set of values


@dataclass
class Config:
    out: str = "out"  # root directory: reads out/sft, out/preferences.jsonl; writes out/dpo
    loss: str = "sigmoid"  # sigmoid (DPO), ipo (IPO) or hinge (SLiC)
    beta: float = 0.1  # β: strength of the implicit KL regularisation
    online: bool = False  # sample pairs from the current policy, judged by r_φ (online DPO)
    rounds: int = 0  # iterative DPO: R rounds of sample → label → train (0: off)
    judge: str = "model"  # who picks the chosen one online: model = r_φ, labeler = noisy gold
    tau: float = 0.1  # the labeler's noise temperature τ (--judge labeler; reward_model.py's)
    n_pairs: int = 0  # offline: n pairs, seen steps·batch_size/n times (0: each seen once)
    steps: int = 500  # optimiser steps
    batch_size: int = 32  # preference pairs per step
    lr: float = 3e-4  # AdamW learning rate (20 warmup steps)
    max_new_tokens: int = 40  # response length cap (online sampling and evaluation)
    eval_every: int = 50  # steps between evaluations and checkpoints (also at 1, 2, 4, …)
    n_eval_prompts: int = 256  # held-out prompts of the shared evaluation
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def degenerate(cfg):
    """Refused at parse time: at β = 0 the sigmoid and hinge losses are constant (no gradient)
    and IPO's target 1/(2β) is infinite."""
    if cfg.beta == 0:
        return "--beta 0: every loss needs β > 0 (at 0, DPO's and SLiC's are constant, IPO's" \
            " target 1/(2β) is infinite)"


def preference_loss(logps_chosen, logps_rejected, ref_chosen, ref_rejected, beta, kind):
    """Per-pair losses, and the implicit rewards β·log π/π_ref of chosen and rejected (detached:
    for logging and accuracy, never for the gradient)."""
    chosen_ratio, rejected_ratio = logps_chosen - ref_chosen, logps_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio  # the log-ratios once, used by every loss
    if kind == "sigmoid":  # DPO, eq. 7: the Bradley–Terry likelihood of the implicit reward
        losses = -F.logsigmoid(beta * h)
    elif kind == "ipo":  # IPO (Azar et al. 2023, eq. 17): regress h onto 1/(2β). In deck 004's
        # form f(βh) it reads (βh − ½)², this times β² (our rewriting): the same minimum
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge, SLiC (Zhao et al. 2023): a margin of 1 on β·h
        losses = torch.relu(1 - beta * h)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def accuracy(chosen_rewards, rejected_rewards):
    """Fraction of pairs ranked right by the implicit reward; a tie counts half (as at step 0)."""
    return ((chosen_rewards > rejected_rewards).float()
            + 0.5 * (chosen_rewards == rejected_rewards).float()).mean().item()


def online_pairs(prompt_ids, responses, score):
    """Two responses per prompt (rows 2i, 2i+1) → (prompt, chosen, rejected), chosen = the one
    the judge scores higher (the first on a tie); score: (batch, 2)."""
    flips = [int(a < b) for a, b in score.tolist()]  # 1: the second response is chosen
    return [(prompt_ids[2 * i], responses[2 * i + f], responses[2 * i + 1 - f])
            for i, f in enumerate(flips)]


def batch_indices(step, batch_size, n):
    """The training pairs of step 1, 2, …: the next batch_size of n, in order, wrapping round
    into the next epoch."""
    return torch.arange((step - 1) * batch_size, step * batch_size) % n


@torch.no_grad()
def judged_pairs(policy, rm, enc, train_prompts, n, cfg, device, chunk=256):
    """n fresh pairs: two responses from the policy to each of n random training prompts (chunk
    prompts at a time), the judge's pick the chosen one (--online: one batch; --rounds: a round).
    Under torchrun each rank samples and judges its share of the prompts; all get all pairs."""
    pairs = []
    size = chunk * c.world()  # prompts of one pass of the loop, over all ranks
    for s in range(0, n, size):
        idx = c.share(torch.randint(len(train_prompts), (min(size, n - s),)).tolist())
        prompt_ids = [train_prompts[i] for i in idx for _ in range(2)]
        with c.autocast(device):
            tokens, mask = c.sample(policy, prompt_ids, cfg.max_new_tokens)
            if cfg.judge == "model":
                score = c.reward(rm, tokens)
            else:  # the labeler's noise drawn for every rank's responses, each its own share
                gold = torch.cat(c.gather([c.score_responses("gold", rm, enc, tokens).cpu()]))
                score = c.share(c.labeler_scores(gold, cfg.tau))
        responses = [row[m].tolist() for row, m in zip(tokens[:, -mask.shape[1]:], mask)]
        pairs += online_pairs(prompt_ids, responses, score.view(-1, 2))
    return c.gather(pairs)


def batch_logps(model, pairs, device):
    """Summed response log-probs of chosen and rejected: (n,) each, in one forward pass."""
    prompts = [p for p, _, _ in pairs] * 2
    tokens, mask = c.collate(prompts, [y for _, y, _ in pairs] + [y for _, _, y in pairs],
                             model.config.pad_token_id)
    P = tokens.shape[1] - mask.shape[1]
    logprobs, _ = c.token_logprobs(model, tokens.to(device), P)  # (2n, T)
    logps = c.response_logprobs(logprobs, mask.to(device))  # Σ_t log π(y_t | x, y_<t): (2n,)
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def all_logps(model, pairs, device, batch_size=64):
    """batch_logps over many pairs, without gradients: the frozen reference's log-probs
    (computed once) and the policy's on held-out pairs."""
    with c.autocast(device):
        out = [batch_logps(model, pairs[i:i + batch_size], device)
               for i in range(0, len(pairs), batch_size)]
    return torch.cat([a for a, _ in out]), torch.cat([b for _, b in out])


def main():
    cfg = c.parse_config(Config, __doc__, CHOICES, check=degenerate)
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir, rm_dir = os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")
    pref_path = os.path.join(cfg.out, "preferences.jsonl")  # written with out/reward_model
    if cfg.online and cfg.n_pairs:
        c.die("--n-pairs sets the offline pairs; online DPO labels new ones at every step")
    if cfg.rounds and (cfg.online or cfg.n_pairs or cfg.steps % cfg.rounds):
        c.die(f"--rounds {cfg.rounds}: each round labels its own pairs, so it takes neither"
              " --online nor --n-pairs, and must divide --steps")
    if cfg.judge != "model" and not (cfg.online or cfg.rounds):
        c.die("--judge picks who labels online pairs; add --online or --rounds (offline pairs"
              " come labelled)")
    c.require(sft_dir, "sft.py", c.build_args(cfg))
    c.require(rm_dir, "reward_model.py", c.build_args(cfg), built_from=[sft_dir])
    out_dir = os.path.join(cfg.out, "dpo")
    c.start_stage(out_dir)

    # models: policy and frozen reference from SFT; r_φ judges online pairs and gives the proxy
    policy = c.load_model(sft_dir).to(device).train()
    c.check_positions(policy, cfg)
    ref = c.load_model(sft_dir).to(device).eval().requires_grad_(False)
    rm = c.load_reward_model(rm_dir, policy).to(device)
    enc = c.tokenizer(policy.config.bpe_ranks)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5, weight_decay=0.0)

    # data: the preference pairs and their reference log-probs (once); held-out prompts
    pairs = c.read_preferences(pref_path, enc, policy.config.n_positions)
    val = pairs["valid"][:N_VAL_PAIRS]
    # the training pairs this run will see, shuffled (steps · batch_size of them, or --n-pairs)
    n = min(len(pairs["train"]), cfg.n_pairs or cfg.steps * cfg.batch_size)
    train = [pairs["train"][i] for i in torch.randperm(len(pairs["train"]))[:n].tolist()]
    if not (cfg.online or cfg.rounds):
        ref_chosen, ref_rejected = all_logps(ref, train, device)
    val_ref = all_logps(ref, val, device) if val else None
    train_prompts = c.prompts("train", enc)
    eval_prompts = c.prompts("eval", enc, cfg.n_eval_prompts)
    fields = c.run_key("dpo", cfg, Config())
    results = c.Results(os.path.join(cfg.out, "results.jsonl"), out_dir, fields)
    ckpt = c.Checkpoint(out_dir, policy)

    def evaluate(step):
        ev = c.evaluate(policy, ref, enc, eval_prompts, cfg.max_new_tokens, rm)
        if val:
            losses, cr, rr = preference_loss(*all_logps(policy, val, device), *val_ref,
                                             cfg.beta, cfg.loss)
            ev["val_loss"], ev["val_acc"] = losses.mean().item(), accuracy(cr, rr)
        return results.add(ev, step, final=step == cfg.steps)

    before = evaluate(0)
    logger = c.Logger(out_dir, cfg.steps,
                      evaluates=lambda s: c.evaluates_at(s, cfg.eval_every, cfg.steps))
    for step in range(1, cfg.steps + 1):
        # 1. a batch of pairs: from the file, sampled now and judged (--online), or from this
        # round's pairs, sampled and judged when the round began (--rounds)
        if cfg.rounds and (step - 1) % (cfg.steps // cfg.rounds) == 0:
            train = judged_pairs(policy, rm, enc, train_prompts,
                                 cfg.steps // cfg.rounds * cfg.batch_size, cfg, device)
            ref_chosen, ref_rejected = all_logps(ref, train, device)
        if cfg.online:  # (under torchrun: a rank's share of the batch, here and below)
            batch = c.share(judged_pairs(policy, rm, enc, train_prompts, cfg.batch_size, cfg,
                                         device))
            b_ref_chosen, b_ref_rejected = all_logps(ref, batch, device)
        else:  # a round's pairs: its steps go through them once (batch_indices wraps)
            idx = c.share(batch_indices(step, cfg.batch_size, len(train)))
            batch = [train[i] for i in idx.tolist()]
            b_ref_chosen, b_ref_rejected = ref_chosen[idx], ref_rejected[idx]
        # 2. policy log-probs of chosen and rejected; 3. the loss
        for group in opt.param_groups:
            group["lr"] = c.lr_at(step - 1, cfg.lr, WARMUP, cfg.steps, cosine=False)
        with c.autocast(device):
            logps_chosen, logps_rejected = batch_logps(policy, batch, device)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            logps_chosen, logps_rejected, b_ref_chosen, b_ref_rejected, cfg.beta, cfg.loss)
        loss = losses.mean()
        # 4. update
        c.optimizer_step(opt, loss, policy.parameters(), step, ckpt)

        # 5. log; evaluate and checkpoint every eval_every steps
        metrics = {"loss": loss.item(), "chosen_reward": chosen_rewards.mean().item(),
                   "rejected_reward": rejected_rewards.mean().item(),
                   "margin": (chosen_rewards - rejected_rewards).mean().item(),
                   "accuracy": accuracy(chosen_rewards, rejected_rewards),
                   "logps_chosen": logps_chosen.mean().item(),
                   "logps_rejected": logps_rejected.mean().item()}
        if c.evaluates_at(step, cfg.eval_every, cfg.steps):
            ev = evaluate(step)
            metrics.update({f"eval_{k}": ev[k] for k in ("gold", "proxy", "kl", "val_acc")
                            if k in ev})
            ckpt.save(policy, step)
            print("  sample:", ev["samples"][0][:150])
        logger.log(step, **metrics)

    # final: results, samples before/after, plots
    c.finish_rl(cfg, out_dir, results, before, ev, f"DPO policy ({fields['run']})",
                [("chosen_reward", "rejected_reward", "margin"), ("logps_chosen", "logps_rejected"),
                 ("accuracy", "eval_val_acc"), ("eval_gold", "eval_proxy"), "eval_kl"],
                [sft_dir, rm_dir])
    print(f"held-out pair accuracy {before.get('val_acc', 0):.3f} → {ev.get('val_acc', 0):.3f}")


if __name__ == "__main__":
    c.run(main)
