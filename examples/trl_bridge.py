"""examples/trl_bridge.py: our data and models in TRL, for whoever outgrows this repo.

Every directory under out/ is a Hugging Face model directory with its tokenizer, and
out/preferences.jsonl holds prompt/chosen/rejected texts, the format of TRL's preference trainers.
This file hands them to TRL (https://huggingface.co/docs/trl), from out/sft:
1. DPO (our dpo.py) on the same preference pairs;
2. a reward model (our reward_model.py): out/sft's trunk with a scalar head, Bradley–Terry;
3. GRPO (our grpo.py) on our training prompts, against out/reward_model and the gold reward
   (TRL calls a reward function as f(prompts=…, completions=…): gold() below wraps ours).
TRL is not a dependency of this repo: `pip install trl==1.16.0` in its own environment (.ci/run
does, and runs this file for 3 steps). On several GPUs: `accelerate launch --num_processes 8
examples/trl_bridge.py` (a DeepSpeed ZeRO config in --config_file for models that do not fit one
GPU); docs/beyond.md says more.
Run: python examples/trl_bridge.py --steps 3   (after `python ppo.py`, from the repo root)
"""
import argparse, os, sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

try:  # TRL (and its datasets) live in an environment of their own: main() says so in one line
    from datasets import Dataset, load_dataset
    from trl import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig,
                     RewardTrainer)
    MISSING = None
except ImportError as e:
    MISSING = e.name

import common as c  # noqa: E402


def gold(prompts, completions, **_):
    """Our gold reward (VADER on the whole review) as TRL's reward_funcs calls it."""
    return c.gold_reward([p + y for p, y in zip(prompts, completions)]).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out", help="our root directory (sft, reward_model,"
                        " preferences.jsonl); TRL's runs go to <out>/trl_*")
    parser.add_argument("--steps", type=int, default=500, help="steps of each trainer (3: a check)")
    args = parser.parse_args()
    if MISSING:
        sys.exit(f"error: {MISSING} is not installed here: TRL is not a dependency of this repo;"
                 " run this file in an environment made with `pip install -r requirements.txt"
                 " trl==1.16.0`")
    sft, rm_dir = os.path.join(args.out, "sft"), os.path.join(args.out, "reward_model")
    pref = os.path.join(args.out, "preferences.jsonl")
    for path in (sft, rm_dir, pref):
        if not os.path.exists(path):
            c.die(f"{path} is missing: run `python reward_model.py --out {args.out}` first")
    tok = AutoTokenizer.from_pretrained(sft)
    pairs = load_dataset("json", data_files=pref, split="train")
    pairs = pairs.filter(lambda r: r["split"] == "train").select_columns(
        ["prompt", "chosen", "rejected"])
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    small = dict(max_steps=args.steps, per_device_train_batch_size=8, logging_steps=1,
                 report_to="none", save_strategy="no", bf16=bf16)

    # 1. DPO: policy and reference from out/sft, the same preference pairs as dpo.py
    DPOTrainer(model=sft, args=DPOConfig(os.path.join(args.out, "trl_dpo"), beta=0.1,
                                         learning_rate=1e-4, **small),
               train_dataset=pairs, processing_class=tok).train()

    # 2. a reward model: out/sft's trunk with a scalar head, trained on the pairs
    rm = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    RewardTrainer(model=rm, args=RewardConfig(os.path.join(args.out, "trl_rm"),
                                              learning_rate=5e-4, **small),
                  train_dataset=pairs, processing_class=tok).train()

    # 3. GRPO against our reward model and the gold reward, on our training prompts
    enc = c.tokenizer(tok.eos_token_id)
    prompts = Dataset.from_dict({"prompt": [enc.decode(p) for p in c.prompts("train", enc, 2000)]})
    GRPOTrainer(model=sft, reward_funcs=[rm_dir, gold], train_dataset=prompts,
                args=GRPOConfig(os.path.join(args.out, "trl_grpo"), num_generations=4,
                                max_completion_length=48, beta=0.05, learning_rate=3e-5,
                                reward_weights=[1.0, 0.0], **small),
                processing_class=tok).train()
    print(f"TRL ran DPO, a reward model and GRPO for {args.steps} steps each on {args.out}")


if __name__ == "__main__":
    main()
