"""bench/budget.py: where the time of `python ppo.py` goes, stage by stage, against the machine's
matmul peak.

Each part of the default pipeline (sft.py, reward_model.py, ppo.py at their defaults) is run
here on its real shapes and code: an SFT step, a chunk of sampled and VADER-labelled responses, a
reward-model step, a PPO rollout (sampling, then r_φ, π_old, π_ref and the critic) and its
update, the evaluations. Each is timed (after a warm-up) and its FLOPs are counted by
torch.utils.flop_counter (matrix products and attention, forward and backward, as executed:
padding included), then multiplied by how many times the defaults run it. Printed per part: its
count, GFLOP and milliseconds per call, minutes in all, its share of the pipeline, and GFLOP/s
as a share of the matmul peak (the precision in use; --precision fp32 for a CPU without native
bf16). Left out: process starts, data loading, writing preferences.jsonl, checkpoints, plots,
and per step gradient clipping and decoding; the last chunk of sampled responses of each split
counts as a full one. The model is out/sft when it exists (responses end where π_SFT ends them),
else a fresh one (responses run to the cap: an upper bound).
Run: python bench/budget.py                     (1.5 min on a 2-core AMX-BF16 Xeon, bf16)
     python bench/budget.py --precision fp32    (2 min there)
"""
import copy, math, os, sys, time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2ForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
import ppo, reward_model as rmod, sft  # noqa: E402  (what is measured)
from throughput import peak_in_use  # noqa: E402


@dataclass
class Config:
    sft: str = "out/sft"  # π_SFT to sample from (a fresh model of sft.py's shape if missing)
    repeats: int = 3  # timed calls of each part (after one warm-up)
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def measure(fn, repeats, sync):
    """(seconds per call, FLOPs of one call): one warm-up call, one counted, `repeats` timed."""
    fn()
    with FlopCounterMode(display=False) as counter:
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats, counter.get_total_flops()


def chunk_of(device):
    """Responses reward_model.comparisons samples and labels at once."""
    return 1024 if device.type == "cuda" else 512


def update_part(p):
    """The name of PPO's update part, with its epochs and minibatches (ppo.Config p)."""
    return f"update ({p.ppo_epochs} epochs × {p.batch_size // p.minibatch_size} minibatches)"


def counts(s, r, p, chunk=512):
    """{part: calls in the default pipeline}, from the three scripts' default Configs; chunk:
    chunk_of(device)."""
    chunks = sum(math.ceil(n * r.k / chunk) for n in (r.n_prompts, r.n_val_prompts))  # per split
    rm_steps = r.epochs * (r.n_prompts // r.batch_size)
    return {
        ("sft", "train step"): s.steps,
        ("sft", "held-out loss"): sum(st % s.eval_every == 0 or st == s.steps
                                      for st in range(1, s.steps + 1)),
        ("sft", "evaluation"): 1,
        ("reward model", f"sample {chunk} responses"): chunks,
        ("reward model", f"label {chunk} (VADER)"): chunks,
        ("reward model", "train step"): rm_steps,
        # the held-out comparisons' rewards: at each validation, for the shift to mean 0 and
        # for the report
        ("reward model", "validation"): 2 + sum(st % r.eval_every == 0 or st == rm_steps
                                                for st in range(1, rm_steps + 1)),
        ("reward model", "evaluation"): 1,  # the correlation with gold on held-out samples
        ("ppo", "rollout: sample"): p.steps,
        ("ppo", "rollout: score (r_φ, π_old, π_ref, critic)"): p.steps,
        ("ppo", update_part(p)): p.steps,
        ("ppo", "evaluation"): 1 + sum(c.evaluates_at(st, p.eval_every, p.steps)
                                       for st in range(1, p.steps + 1)),
    }


def parts(s, r, p, policy, enc, device):
    """{part: a function that runs it once}, on the defaults' shapes and the scripts' code (the
    keys of counts(s, r, p, chunk_of(device)))."""
    chunk = chunk_of(device)
    ref = policy
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    head = GPT2ForSequenceClassification(config).to(device)
    head.load_state_dict(policy.state_dict(), strict=False)  # trunk of π_SFT, a fresh head
    rm, critic = head.eval(), head
    x, y, _ = sft.batch(sft.openings("valid", enc, s.max_len), enc, s.max_len)
    idx = torch.randperm(len(x))[:s.batch_size]  # a batch cut to its longest row, as sft.py's
    n = int((x[idx] != enc.eot_token + 1).sum(1).max())
    xb, yb = x[idx, :n].to(device), y[idx, :n].to(device)
    val = [t.to(device) for t in (x, y)]  # sft.py's held-out set
    prompts = c.prompts("train", enc)
    eval_prompts = c.prompts("eval", enc, p.n_eval_prompts)
    opts = sft.optimizers(policy, s)  # sft.py's (Muon and AdamW)
    sft.set_lr(opts, 1e-9)  # (which leave π_SFT as it is: the parts below sample from it)
    popt = torch.optim.AdamW([*policy.parameters(), *critic.parameters()], lr=1e-9)
    rm_opt = torch.optim.AdamW(rm.parameters(), lr=1e-9)
    tax = ppo.lm_batch(enc, "valid", range(ppo.N_TAX_TEXTS), ppo.LM_TOKENS, device)
    rollout = {}

    def sft_step():
        policy.train()
        with c.autocast(device):
            loss = sft.sft_loss(policy, xb, yb)
        policy.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()

    def heldout():
        policy.eval()
        sft.heldout_loss(policy, *val, 1, device)

    def evaluation(judge=rm):  # ppo.py's, and sft.py's without r_φ
        c.evaluate(policy, ref, enc, eval_prompts, p.max_new_tokens, judge)

    def correlation():  # reward_model.py's report: fresh samples, r_φ and VADER on each
        with torch.no_grad(), c.autocast(device):
            for tokens, _ in c.sample_batched(policy.eval(), eval_prompts, r.max_new_tokens, 64):
                c.reward(rm, tokens)
                c.GOLDS["vader"]([c.decode(enc, t) for t in tokens.tolist()])

    def sample(n, store=None):
        with torch.no_grad(), c.autocast(device):
            tokens, mask = c.sample(policy.eval(), prompts[:n], p.max_new_tokens)
        if store:
            rollout[store] = tokens
            rollout.update(mask=mask.float(), P=tokens.shape[1] - mask.shape[1])
        return tokens

    # the responses the steps below train and score on
    texts = [c.decode(enc, t) for t in sample(chunk, store="comparisons").tolist()]
    sample(p.batch_size, store="tokens")

    def rm_step():  # k responses to each of batch_size prompts, each forwarded once
        rm.train()
        tokens = rollout["comparisons"][:r.batch_size * r.k]
        with c.autocast(device):
            rewards = c.reward(rm, tokens).view(r.batch_size, r.k)
        loss = rmod.bt_loss(rewards[:, :1].expand(-1, r.k - 1), rewards[:, 1:]).mean()
        rm_opt.zero_grad(set_to_none=True)
        loss.backward()
        rm_opt.step()

    def rm_validation():  # the held-out comparisons' responses, 32 prompts' at a time
        size, n = 32 * r.k, r.n_val_prompts * r.k  # reward_model.all_rewards' batches
        with torch.no_grad(), c.autocast(device):
            for j in range(0, n, size):
                c.reward(rm.eval(), rollout["comparisons"][:min(size, n - j)])

    def score():
        tokens, P = rollout["tokens"], rollout["P"]
        with torch.no_grad(), c.autocast(device):
            c.score_responses("model", rm, enc, tokens)
            for model in (policy, ref):
                c.rollout_logprobs(model, tokens, P, p.minibatch_size, p.temperature)
            ppo.critic_values(critic, tokens, P, p.minibatch_size)

    def update():
        tokens, mask, P = rollout["tokens"], rollout["mask"], rollout["P"]
        policy.train()
        for epoch in range(p.ppo_epochs):
            for sl in c.minibatches(len(tokens), p.minibatch_size, epoch):
                with c.autocast(device):
                    logprobs, entropy = c.token_logprobs(policy, tokens[sl], P, p.temperature)
                    values = ppo.critic_values(critic, tokens[sl], P, p.minibatch_size)
                pg = ppo.ppo_policy_loss(logprobs, logprobs.detach(), mask[sl], mask[sl], p.clip)
                vf = ppo.value_loss(values, values.detach(), mask[sl], mask[sl], p.vf_clip)
                loss = ppo.ppo_total_loss(pg, vf, c.masked_mean(entropy, mask[sl]), p.vf_coef,
                                          p.ent_coef)
                popt.zero_grad(set_to_none=True)
                loss.backward()
                popt.step()

    def ppo_evaluation():
        evaluation()
        ppo.alignment_tax(policy, tax, device)

    return {
        ("sft", "train step"): sft_step,
        ("sft", "held-out loss"): heldout,
        ("sft", "evaluation"): lambda: evaluation(None),
        ("reward model", f"sample {chunk} responses"): lambda: sample(chunk),
        ("reward model", f"label {chunk} (VADER)"): lambda: c.GOLDS["vader"](texts),
        ("reward model", "train step"): rm_step,
        ("reward model", "validation"): rm_validation,
        ("reward model", "evaluation"): correlation,
        ("ppo", "rollout: sample"): lambda: sample(p.batch_size, store="tokens"),
        ("ppo", "rollout: score (r_φ, π_old, π_ref, critic)"): score,
        ("ppo", update_part(p)): update,
        ("ppo", "evaluation"): ppo_evaluation,
    }


def budget_table(rows, peak):
    """Markdown lines: per part (stage, part, calls, seconds and FLOPs per call) its minutes,
    share of the whole and GFLOP/s against the peak; a total per stage and for all."""
    total = sum(n * sec for _, _, n, sec, _ in rows)
    lines = ["| stage | part | calls | ms/call | GFLOP/call | minutes | share | GFLOP/s |"
             " of peak |", "|---|---|---|---|---|---|---|---|---|"]

    def line(stage, part, n, sec, flops):
        rate = flops / sec / 1e9 if sec else 0.0
        calls = "" if n is None else f"{n:,}"
        per = ("", "") if n is None else (f"{sec * 1e3:.0f}", f"{flops / 1e9:.2f}")
        seconds = (n or 1) * sec
        return (f"| {stage} | {part} | {calls} | {per[0]} | {per[1]} | {seconds / 60:.2f} |"
                f" {100 * seconds / total:.0f}% | {rate:.0f} | {100 * rate * 1e9 / peak:.0f}% |")
    for stage in dict.fromkeys(s for s, *_ in rows):
        mine = [row for row in rows if row[0] == stage]
        lines += [line(*row) for row in mine]
        lines.append(line(f"**{stage}**", "all", None, sum(n * sec for _, _, n, sec, _ in mine),
                          sum(n * f for _, _, n, _, f in mine)))
    lines.append(line("**pipeline**", "all", None, total, sum(n * f for *_, n, _, f in rows)))
    return lines


def main():
    cfg = c.parse_config(Config, __doc__)
    device = c.setup(cfg.seed, cfg.precision)
    s, r, p = sft.Config(), rmod.Config(), ppo.Config()
    if os.path.exists(os.path.join(cfg.sft, "config.json")):
        policy, origin = c.load_model(cfg.sft), cfg.sft
    else:
        policy = c.build_model(s.n_ranks, s.n_layer, s.n_head, s.n_embd, s.max_len + 64)
        origin = "a fresh model (responses run to the cap)"
    policy.to(device)
    enc = c.tokenizer(policy.config.bpe_ranks)
    name, peak = peak_in_use(device)
    print(f"{torch.get_num_threads()} threads | {name} | matmul peak {peak / 1e9:.0f} GFLOP/s |"
          f" π_SFT: {origin}", flush=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, fns, rows = counts(s, r, p, chunk_of(device)), parts(s, r, p, policy, enc, device), []
    for (stage, part), fn in fns.items():
        sec, flops = measure(fn, cfg.repeats, sync)
        rows.append((stage, part, n[(stage, part)], sec, flops))
        print(f"{stage}, {part}: {sec * 1e3:.0f} ms, {flops / 1e9:.2f} GFLOP per call", flush=True)
    print("\n".join(budget_table(rows, peak)))


if __name__ == "__main__":
    c.run(main)
