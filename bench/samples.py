"""bench/samples.py: what each trained model writes. The first --n held-out openings, answered by
π_SFT and by each default run's policy (out/ppo, out/rloo, out/grpo, out/dpo), one sample each
at temperature 1 with the shared evaluation's sampler and seed, each scored by the gold reward;
written as a markdown page. A model directory that is missing or unfinished is skipped with one
line.

Run: python ppo.py && python rloo.py && python grpo.py && python dpo.py   (the default runs)
     python bench/samples.py            (writes docs/samples.md)
"""
import json, os, sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402

MODELS = [("π_SFT", "sft", "python sft.py"), ("PPO", "ppo", "python ppo.py"),
          ("RLOO", "rloo", "python rloo.py"), ("GRPO", "grpo", "python grpo.py"),
          ("DPO", "dpo", "python dpo.py")]


@dataclass
class Config:
    out: str = "out"  # pipeline root: reads out/sft, out/ppo, out/rloo, out/grpo, out/dpo
    md: str = "docs/samples.md"  # the page written
    n: int = 6  # held-out openings shown
    max_new_tokens: int = 40  # response length cap (the scripts' default)
    seed: int = 1234  # sampling seed (the shared evaluation's)
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def finished(path):
    """A stage directory whose record says it finished."""
    try:
        with open(os.path.join(path, "run.json")) as f:  # lib/stages.py's RECORD
            return bool(json.load(f).get("finished"))
    except (OSError, ValueError):
        return False


def answers(model, enc, prompt_ids, cfg):
    """One continuation per prompt (the text after the prompt) and its gold reward."""
    torch.manual_seed(cfg.seed)
    texts, device = [], model.lm_head.weight.device
    with torch.no_grad(), c.autocast(device):
        for tokens, mask in c.sample_batched(model, prompt_ids, cfg.max_new_tokens, 64):
            texts += [c.decode(enc, t) for t in tokens.tolist()]
    gold = c.gold_reward(texts)
    return texts, [float(g) for g in gold]


def main():
    cfg = c.parse_config(Config, __doc__)
    device = c.setup(cfg.seed, cfg.precision)
    have = [(name, d, cmd) for name, d, cmd in MODELS if finished(os.path.join(cfg.out, d))]
    for name, d, cmd in MODELS:
        if (name, d, cmd) not in have:
            print(f"{cfg.out}/{d} is missing or unfinished: `{cmd}` makes it; skipped")
    if not have:
        c.die(f"no finished model under {cfg.out}: run `python ppo.py` first")
    first = c.load_model(os.path.join(cfg.out, have[0][1]))
    enc = c.tokenizer(first.config.bpe_ranks)
    prompt_ids = c.prompts("eval", enc, cfg.n)
    openings = [c.decode(enc, p) for p in prompt_ids]
    rows = {}
    for name, d, cmd in have:
        model = c.load_model(os.path.join(cfg.out, d)).to(device).eval()
        rows[name] = answers(model, enc, prompt_ids, cfg)
    lines = ["# What each model writes", "",
             f"The first {cfg.n} held-out openings (`c.prompts('eval')`, lib/data.py), one continuation"
             f" each at temperature 1 (at most {cfg.max_new_tokens} tokens, sampling seed"
             f" {cfg.seed}), and its gold reward r* (VADER, in [−1, 1]). Made by"
             f" `python bench/samples.py` from the default runs' models on pipeline"
             f" `{c.pipeline_at(cfg.out)}` (docs/pipelines.md): "
             + ", ".join(f"`{cfg.out}/{d}` (`{cmd}`)" for _, d, cmd in have)
             + f". One sample per opening: the means over 256 openings are in the README's"
             " table; these show what the numbers mean. Sampled in"
             f" {os.environ.get(c.PRECISION_ENV)} on {device.type}: another precision"
             " draws other samples.", ""]
    for i, opening in enumerate(openings):
        lines += [f"## {i + 1}. “{opening.strip()}…”", "", "| model | r* | continuation |",
                  "|---|---|---|"]
        for name in rows:
            text, gold = rows[name][0][i], rows[name][1][i]
            cont = text[len(opening):] if text.startswith(opening) else text
            cont = " ".join(cont.split()).replace("|", "\\|") or "(nothing: end-of-text at once)"
            lines.append(f"| {name} | {gold:+.2f} | {cont} |")
        lines.append("")
    os.makedirs(os.path.dirname(cfg.md) or ".", exist_ok=True)
    with open(cfg.md + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(cfg.md + ".tmp", cfg.md)
    print(f"wrote {cfg.md}: {cfg.n} openings × {len(have)} models")


if __name__ == "__main__":
    c.run(main)
