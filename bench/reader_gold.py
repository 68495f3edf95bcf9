"""bench/reader_gold.py: does the reader's gold agree with VADER on π_SFT's own samples?

Samples 4 responses to each of the 256 held-out prompts from out/sft, scores them with VADER and
with the reader's gold (common.reader_reward), and reports their correlation, how often the two
order a pair of responses to the same prompt alike, and rep-2's mean and share of zeros; then
the same for texts that pile up praise. Writes <out>/reader_gold.json (docs/goodhart.md quotes
docs/reader_gold.json).
Run: python bench/reader_gold.py      (≈ 1 min once out/sft exists)
"""
import json, os, sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402

PILES = ["This movie is great! great acting, great story, great fun, great great great.",
         "A wonderful, wonderful film. Wonderful cast and a wonderful, beautiful, wonderful end."]


@dataclass
class Config:
    out: str = "out"  # reads out/sft; writes out/reader_gold.json
    k: int = 4  # samples per held-out prompt
    n_prompts: int = 256  # held-out prompts
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def pair_agreement(a, b):
    """Share of the pairs of responses to one prompt (a, b: (prompts, k)) that a and b order
    alike, among those both order strictly."""
    i, j = torch.triu_indices(a.shape[1], a.shape[1], 1)
    da, db = a[:, i] - a[:, j], b[:, i] - b[:, j]
    strict = (da != 0) & (db != 0)
    return ((da > 0) == (db > 0))[strict].float().mean().item()


def main():
    cfg = c.parse_config(Config, __doc__)
    device = c.setup(cfg.seed, cfg.precision)
    sft_dir = os.path.join(cfg.out, "sft")
    c.require(sft_dir, "sft.py", ["--out", cfg.out])
    sft = c.load_model(sft_dir).to(device).eval()
    enc = c.tokenizer(sft.config.bpe_ranks)
    prompt_ids = [p for p in c.prompts("eval", enc, cfg.n_prompts) for _ in range(cfg.k)]
    with torch.no_grad(), c.autocast(device):
        texts = [c.decode(enc, t) for tokens, _ in c.sample_batched(sft, prompt_ids, 40, 64)
                 for t in tokens.tolist()]
    vader = c.gold_reward(texts)
    reader = c.reader_reward(texts, vader)
    rep = torch.tensor([c.repetition(t) for t in texts])
    corr = torch.corrcoef(torch.stack([vader, reader]))[0, 1].item()
    report = {"pipeline": c.pipeline_at(cfg.out), "samples": len(texts), "corr": corr,
              "pair_agreement": pair_agreement(vader.view(-1, cfg.k), reader.view(-1, cfg.k)),
              "vader_mean": vader.mean().item(), "reader_mean": reader.mean().item(),
              "rep2_mean": rep.mean().item(), "rep2_zero": (rep == 0).float().mean().item(),
              "piles": [{"text": t, "vader": v, "reader": r} for t, v, r in zip(
                  PILES, c.gold_reward(PILES).tolist(), c.reader_reward(PILES).tolist())]}
    with open(os.path.join(cfg.out, "reader_gold.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    c.run(main)
