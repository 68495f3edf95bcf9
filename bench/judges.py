"""bench/judges.py: two claims of the decks the repo has the parts for, measured.

ties (deck 001: a ranking may have ties): the share of the labeler's pairs in each pipeline's
  preferences.jsonl whose two responses have the same gold reward (most of them: both VADER 0,
  no sentiment words). The labeler's Gumbel noise orders such a pair at random, so its label is a
  coin flip, and the Bradley–Terry loss has no term for a tie.
judges (deck 002, Llama 2's Figure 11: a reward model as judge may favour the model trained on
  it): the RLOO policies of the pipelines given answer the same held-out prompts (one response
  each, temperature 1); for each two of them, A and B, the win rate of A over B as judged by
  every pipeline's r_φ and by gold. A's judge favours A where its win rate for A is above B's
  judge's (and gold's). (A first version set each policy against its own π_SFT: every judge
  gave win rates of 0.91 to 0.98, too near 1 to show a bias.)
Each --outs folder needs sft/, reward_model/, rloo/ and preferences.jsonl (`python rloo.py
--out X --seed s` builds them). Writes <first out>/judges.jsonl, one row per measurement.
Run: python bench/judges.py --outs "out out/pipeline1 out/pipeline2"   (≈ 3 min on a 2-core
     AVX2 CPU, fp32)
"""
import math, os, sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402


@dataclass
class Config:
    outs: str = "out"  # pipelines: folders with sft/, reward_model/, rloo/, preferences.jsonl
    prompts: int = 256  # held-out prompts, one response each from the policy and from π_SFT
    max_new_tokens: int = 40  # response length cap (the scripts' default)
    seed: int = 0  # random seed of the sampling
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def tied_pairs(records):
    """(pairs, pairs whose two responses have equal gold, of those: both exactly 0)."""
    tied = [r for r in records if r["chosen_gold"] == r["rejected_gold"]]
    return len(records), len(tied), sum(r["chosen_gold"] == 0 for r in tied)


def win_rate(a, b):
    """Share of prompts where response a scores above response b, a tie counting half, and its
    standard error √(w(1 − w)/n)."""
    w = ((a > b).float() + 0.5 * (a == b).float()).mean().item()
    return w, math.sqrt(w * (1 - w) / len(a))


def responses(model, prompt_ids, cfg, device):
    torch.manual_seed(cfg.seed)
    with torch.no_grad(), c.autocast(device):
        return c.sample_batched(model, prompt_ids, cfg.max_new_tokens, 64)


def main():
    cfg = c.parse_config(Config, __doc__)
    outs = cfg.outs.split()
    device = c.setup(cfg.seed, cfg.precision)
    ids = [c.pipeline_at(o) for o in outs]
    path, rows = os.path.join(outs[0], "judges.jsonl"), []
    for out, pid in zip(outs, ids):
        n, tied, zero = tied_pairs(c.read_jsonl(os.path.join(out, "preferences.jsonl")))
        rows.append({"run": f"ties {pid}", "pipeline": pid, "pairs": n, "tied": tied,
                     "tied_both_zero": zero, "tied_share": tied / n})
        print(f"{pid}: {tied} of {n} pairs ({tied / n:.3f}) tie on gold, {zero} of them at 0")
    policies = [c.load_model(os.path.join(o, "rloo")).to(device).eval() for o in outs]
    rms = [c.load_reward_model(os.path.join(o, "reward_model"), policies[0]).to(device)
           for o in outs]
    enc = c.tokenizer(policies[0].config.bpe_ranks)
    prompt_ids = c.prompts("eval", enc, cfg.prompts)
    tokens = [[t for t, _ in responses(m, prompt_ids, cfg, device)] for m in policies]
    with torch.no_grad(), c.autocast(device):
        scores = {"gold": [torch.cat([c.gold_reward([c.decode(enc, x) for x in t.tolist()])
                                      for t in ts]) for ts in tokens]}
        for rm, jid in zip(rms, ids):
            scores[jid] = [torch.cat([c.reward(rm, t).float().cpu() for t in ts]) for ts in tokens]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            for jid, s in scores.items():
                w, se = win_rate(s[a], s[b])
                rows.append({"run": f"judge {ids[a]} vs {ids[b]} by {jid}", "pipeline": ids[a],
                             "against": ids[b], "judge": jid, "win_rate": w, "win_rate_se": se,
                             "prompts": cfg.prompts})
                print(f"RLOO of {ids[a]} over RLOO of {ids[b]}, judged by {jid}:"
                      f" {w:.3f} ± {se:.3f}")
    for r in rows:  # a rerun replaces a measurement's row
        c.replace_rows(path, r["run"], [r])
    print(f"wrote {path}")


if __name__ == "__main__":
    c.run(main)
