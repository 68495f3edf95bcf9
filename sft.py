"""sft.py: Step 1 of RLHF, supervised fine-tuning: maximise E log π(y|x) on IMDb review openings.

x (prompt) = the first 2–8 tokens of a review; y (response) = the rest of its opening, up to
--max-len tokens, cut after its last full sentence and closed with end-of-text so that the model
learns to stop. The loss counts response tokens only (prompt tokens are masked out). From scratch
by default (a 1.3M-parameter GPT-2: 4 blocks of width 128, 4096 BPE ranks; Muon for the blocks'
matrices, AdamW for the rest); --init gpt2 starts from a real GPT-2.
Writes out/sft/: the model (Hugging Face format, also π_ref of every later step), metrics.jsonl,
loss.png, samples.txt, and the SFT point (gold reward of its samples, KL 0) in out/results.jsonl.

Left out: packing several openings into one row, gradient accumulation.
Run: python sft.py
     python sft.py --init gpt2 --optimizer adamw --lr 1e-4 --steps 1000   (GPU, a real GPT-2)
     torchrun --nproc_per_node N sft.py   (N data-parallel ranks: docs/beyond.md)
"""
import math, os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import common as c


@dataclass
class Config:
    out: str = "out"  # root directory of every stage's outputs
    init: str = ""  # start from this Hugging Face GPT-2 (hub name or directory); '' = from scratch
    n_ranks: int = 4096  # BPE ranks kept for a from-scratch model (vocab = ranks + eot + pad)
    n_layer: int = 4  # from-scratch model: transformer blocks
    n_head: int = 4  # from-scratch model: attention heads
    n_embd: int = 128  # from-scratch model: width
    max_len: int = 64  # tokens per review opening (prompt + response)
    steps: int = 900  # optimiser steps
    batch_size: int = 64  # openings per step
    lr: float = 6e-3  # peak learning rate (AdamW), after linear warmup, cosine decay to lr/10
    optimizer: str = "muon"  # muon: Muon for the blocks' matrices, AdamW for the rest; or adamw
    muon_lr: float = 0.02  # --optimizer muon: Muon's peak learning rate (same schedule)
    warmup: int = 100  # warmup steps
    weight_decay: float = 0.1  # AdamW weight decay on matrices
    eval_every: int = 250  # steps between held-out loss evaluations and checkpoints
    n_eval_prompts: int = 256  # held-out prompts for the final sample-and-score evaluation
    max_new_tokens: int = 40  # response length cap when sampling
    bucket: bool = False  # batch openings of similar length: less padding computed per step
    preferred: bool = False  # Preferred-FT: go on from out/sft on the chosen responses of pairs
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def openings(split, enc, max_len, n=None):
    """(prompt, response) token lists of review openings: the prompt is the first 2–8 tokens
    (as in c.prompts), the response the rest of the opening, cut after its last full sentence
    within max_len tokens and closed with end-of-text (no full sentence: the whole window)."""
    ends = {i for i in range(enc.eot_token) if enc.decode_single_token_bytes(i).rstrip()[-1:]
            in (b".", b"!", b"?")}
    examples = []
    texts = c.imdb()[split][:n]
    for i, ids in enumerate(enc.encode_ordinary_batch([t[:1000] for t in texts])):
        n_prompt, ids = 2 + i % 7, ids[:max_len]
        cut = max([j + 1 for j, t in enumerate(ids) if t in ends and j >= n_prompt], default=0)
        ids = ids[:cut] + [enc.eot_token] if cut else ids
        examples.append((ids[:n_prompt], ids[n_prompt:]))
    return examples


def preferred(path, split, enc, model):
    """Preferred-FT's data: (prompt, chosen response) of every pair of preferences.jsonl."""
    pairs = c.read_preferences(path, enc, model.config.n_positions)[split]  # lengths checked
    return [(prompt, chosen) for prompt, chosen, _ in pairs]


def batch(examples, enc, max_len):
    """Rows of max_len tokens (right-padded) and next-token targets with the prompt and padding
    set to -100, cross_entropy's ignore_index: the loss is −log π(y|x) over response tokens only.
    Also the UTF-8 bytes of the responses, for bits per byte."""
    pad, rows, targets, n_bytes = enc.eot_token + 1, [], [], 0
    for prompt, response in examples:
        row = (prompt + response)[:max_len + 1]
        row += [pad] * (max_len + 1 - len(row))
        rows.append(row[:-1])
        targets.append([-100] * (len(prompt) - 1) + row[len(prompt):])
        n_bytes += len(c.decode(enc, response).encode())
    x, y = torch.tensor(rows), torch.tensor(targets)  # (N, max_len) each
    return x, y.masked_fill(y == pad, -100), n_bytes


def length_batches(lengths, batch_size, group=16):
    """One epoch of batches of similar length, so that a batch cut to its longest row computes
    little padding: shuffle, sort each run of group·batch_size rows by length, cut it into
    batches, shuffle the batches. Returns index tensors, each of batch_size rows (the last
    partial batch of the epoch is dropped)."""
    order = torch.randperm(len(lengths))
    batches = []
    for i in range(0, len(order), group * batch_size):
        run = order[i:i + group * batch_size]
        run = run[lengths[run].argsort(stable=True)]
        batches += [run[j:j + batch_size] for j in range(0, len(run) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches)).tolist()]


def optimizers(model, cfg, fused=False):
    """AdamW, weight decay on matrices only; --optimizer muon: Muon for the transformer blocks'
    weight matrices, AdamW for the rest (embeddings, also the tied LM head; norms; biases). Each
    group's "scale" is its peak learning rate over --lr: one schedule (set_lr) drives them all."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if cfg.optimizer == "muon" and p.dim() == 2 and ".h." in n]
    rest = [p for n, p in named if all(p is not h for h in hidden)]
    decay = [p for p in rest if p.dim() >= 2]  # matrices and embeddings
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay, "scale": 1.0},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0,
                                "scale": 1.0}], lr=cfg.lr, betas=(0.9, 0.95), fused=fused)
    if cfg.optimizer != "muon":
        return [adamw]
    return [adamw, c.Muon([{"params": hidden, "scale": cfg.muon_lr / cfg.lr}], lr=cfg.muon_lr)]


def set_lr(opts, lr):
    """Every group's learning rate: lr (the schedule's, at --lr's scale) × the group's scale."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]


def sft_loss(model, x, y):
    """Mean −log π(y_t | x, y_<t) over response tokens (nats/token); -100 masks the rest. The LM
    head runs on the counted positions only: prompt and padding (a third of a batch) skip it."""
    hidden = model.transformer(input_ids=x).last_hidden_state  # (B, T, D); right padding: real
    counted = y != -100  # tokens never attend to it
    logits = model.lm_head(hidden[counted])  # (N, V): N counted positions
    return F.cross_entropy(logits.float(), y[counted])


@torch.no_grad()
def heldout_loss(model, x, y, n_bytes, device, batch_size=128):
    """Held-out nats/token and bits/byte (comparable across vocabularies) of response tokens."""
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with c.autocast(device):
            n = (yb != -100).sum().item()
            total += sft_loss(model, xb, yb).item() * n
            count += n
    return total / count, total / math.log(2) / n_bytes


def main():
    cfg = c.parse_config(Config, __doc__, {"optimizer": ["adamw", "muon"]})
    device = c.setup(cfg.seed, cfg.precision)
    out_dir = os.path.join(cfg.out, "preferred_ft" if cfg.preferred else "sft")
    pref_path = os.path.join(cfg.out, "preferences.jsonl")

    # model: from scratch, any Hugging Face GPT-2, or the SFT model (Preferred-FT)
    inputs = [os.path.join(cfg.out, "sft"), os.path.join(cfg.out, "reward_model")]
    if cfg.preferred:  # preferences.jsonl is written with out/reward_model
        c.require(inputs[0], "sft.py", c.build_args(cfg))
        c.require(inputs[1], "reward_model.py", c.build_args(cfg), built_from=inputs[:1])
        model = c.load_model(inputs[0])
    elif cfg.init:
        model = c.load_model(cfg.init)
    else:
        model = c.build_model(cfg.n_ranks, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.max_len + 64)
    model.to(device).train()
    c.check_positions(model, cfg)
    run_dir = c.start_stage(out_dir)  # out_dir, or beside a finished SFT until this one ends
    c.check_space(out_dir, model)
    enc = c.tokenizer(model.config.bpe_ranks)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters,"
          f" vocabulary {model.config.vocab_size}")

    # data: review openings of the train and validation splits (Preferred-FT: chosen responses)
    data = (lambda split: preferred(pref_path, split, enc, model)) if cfg.preferred else \
        (lambda split: openings(split, enc, cfg.max_len))
    x, y, _ = batch(data("train"), enc, cfg.max_len)
    val_x, val_y, val_bytes = batch(data("valid"), enc, cfg.max_len)

    # Muon on the blocks' matrices, AdamW on the rest (--optimizer adamw: alone); warmup, cosine
    opts = optimizers(model, cfg, fused=device.type == "cuda")
    lr_flags = "--lr or --muon-lr" if cfg.optimizer == "muon" else "--lr"  # what a divergence names
    logger = c.Logger(out_dir, cfg.steps,
                      evaluates=lambda s: s % cfg.eval_every == 0 or s == cfg.steps)
    lengths = (x != enc.eot_token + 1).sum(1)  # real tokens of each row (the rest is padding)
    order, batches, saved = torch.randperm(len(x)), [], None
    for step in range(1, cfg.steps + 1):
        # 1. a batch of openings (epochs in a fixed shuffled order; --bucket: of similar
        # length; under torchrun a rank's share of it), cut to its longest row
        if cfg.bucket:
            batches = batches or length_batches(lengths, cfg.batch_size)
            idx = batches.pop()
        else:
            idx = order[torch.arange((step - 1) * cfg.batch_size, step * cfg.batch_size) % len(x)]
        idx = c.share(idx)
        n = int(lengths[idx].max())
        xb, yb = x[idx, :n].to(device), y[idx, :n].to(device)
        # 2. loss on response tokens, 3. update
        lr = c.lr_at(step - 1, cfg.lr, cfg.warmup, cfg.steps)
        set_lr(opts, lr)
        with c.autocast(device):
            loss = sft_loss(model, xb, yb)
        if not torch.isfinite(loss):
            kept = f"the last good checkpoint (step {saved}) is in {run_dir}" if saved else \
                "this run saved nothing"
            c.die(f"non-finite loss at step {step}; {kept}; try a lower {lr_flags}")
        model.zero_grad(set_to_none=True)
        loss.backward()
        n_tokens = (yb != -100).sum()  # the loss is a mean over them: ranks weigh by them
        c.average_gradients(model.parameters(), weight=n_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.GRAD_CLIP)
        for opt in opts:
            opt.step()
        # 4. log; every eval_every steps also the held-out loss and a checkpoint
        metrics = {"loss": c.all_mean(loss.item(), n_tokens), "grad_norm": grad_norm.item(),
                   "lr": lr}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            metrics["val_loss"], metrics["val_bpb"] = heldout_loss(model, val_x, val_y,
                                                                   val_bytes, device)
            if not math.isfinite(metrics["val_loss"]):  # never save over a good checkpoint
                c.die(f"held-out loss is not finite at step {step}: training diverged and"
                      f" nothing was saved at this step; try a lower {lr_flags}")
            c.save_model(model, run_dir)
            saved = step
            model.train()
        logger.log(step, **metrics)

    # final: held-out samples, their gold reward (the baseline of every later plot), plots
    model.eval()
    prompt_ids = c.prompts("eval", enc, cfg.n_eval_prompts)
    ref = c.load_model(os.path.join(cfg.out, "sft")).to(device) if cfg.preferred else model
    ev = c.evaluate(model, ref.eval(), enc, prompt_ids, cfg.max_new_tokens)
    if c.rank() > 0:  # under torchrun rank 0 writes the results
        return
    name = "preferred-ft" if cfg.preferred else "sft"
    points = c.Results(os.path.join(cfg.out, "results.jsonl"), out_dir,
                       c.run_key(name, cfg, Config()))
    points.add(ev, cfg.steps, final=True)
    with open(os.path.join(run_dir, "samples.txt"), "w") as f:
        f.write(f"{name} samples on held-out prompts (mean gold reward {ev['gold']:.3f}"
                f" over {len(prompt_ids)} prompts)\n\n" + "\n\n".join(ev["samples"]) + "\n")
    c.write_card(out_dir, cfg, "Preferred-FT policy (SFT on the chosen responses)" if cfg.preferred
                 else "SFT policy π_SFT, also π_ref of every later stage",
                 f"loss {metrics['val_loss']:.3f} nats/token = {metrics['val_bpb']:.3f} bits/byte"
                 f" on validation openings; mean gold (VADER) reward of samples {ev['gold']:.3f}")
    c.plot_metrics(out_dir, [("loss", "val_loss"), "val_bpb", "lr"], "loss.png")
    print(f"held-out loss {metrics['val_loss']:.3f} nats/token = {metrics['val_bpb']:.3f}"
          f" bits/byte | gold reward of samples {ev['gold']:.3f} | saved {out_dir}")
    print("sample:", ev["samples"][0])
    # its record, then its point (a new π_SFT moves the earlier results aside: not comparable)
    c.finish_run(out_dir, cfg, inputs if cfg.preferred else [], points, new_sft=not cfg.preferred)


if __name__ == "__main__":
    c.run(main)
