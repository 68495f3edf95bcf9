"""bench/throughput.py: how fast the default model trains and samples on this machine, in one run.

Prints: the matmul peak of the precision in use (bf16 where the device has it natively, else
fp32: an emulated precision is never timed, it would take minutes and mean nothing); SFT training
tokens/s and its model FLOPs utilisation (6·N FLOPs per token, N = parameters, plus attention)
against that peak, and the same step with `sft.py --optimizer muon` (its Newton–Schulz runs in
the precision in use: torch.optim.Muon's bf16 made the step 5.4× AdamW's with oneDNN limited to
AVX2); sampling tokens/s of common.sample() and of transformers' generate() on the same model
and batch (--batch-size sets both batches). 9 s on
a 2-core AVX512-BF16 CPU (12 s in fp32 there); about half a minute estimated on a 2-core AVX2
CPU in fp32.
Run: python bench/throughput.py        (defaults: the sft.py model, a batch of 64, 48 new tokens)
"""
import os, sys, time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as c  # noqa: E402
from sft import Config as SFTConfig, batch, openings, optimizers, sft_loss  # noqa: E402


@dataclass
class Config:
    batch_size: int = 64  # openings per training step and prompts per sampling batch
    max_new_tokens: int = 40  # tokens sampled per response
    repeats: int = 5  # timed repetitions (after one warm-up)
    seed: int = 0  # random seed
    precision: str = "auto"  # auto: bf16 autocast where the device has it natively, else fp32


def timed(fn, repeats):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def matmul_peak(dtype, device, n=2048, repeats=10):
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype,
                                                                        device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def mm():
        a @ b
        sync()
    return 2 * n ** 3 / timed(mm, repeats)


def peak_in_use(device):
    """(name, matmul FLOP/s) of the precision setup() chose: the one training runs in."""
    with c.autocast(device):
        dtype, name = (torch.bfloat16, "bf16") if torch.is_autocast_enabled(device.type) \
            else (torch.float32, "fp32")
    return name, matmul_peak(dtype, device)


def main():
    cfg = c.parse_config(Config, __doc__)
    device = c.setup(cfg.seed, cfg.precision)
    s = SFTConfig()
    model = c.build_model(s.n_ranks, s.n_layer, s.n_head, s.n_embd, s.max_len + 64).to(device)
    enc = c.tokenizer(s.n_ranks)
    n_params = sum(p.numel() for p in model.parameters())
    name, peak = peak_in_use(device)
    print(f"{torch.get_num_threads()} threads | {name} matmul peak {peak / 1e9:.0f} GFLOP/s")

    # training: the sft.py step (forward, masked loss, backward, AdamW; then --optimizer muon)
    x, y, _ = batch(openings("valid", enc, s.max_len), enc, s.max_len)
    xb, yb = x[:cfg.batch_size].to(device), y[:cfg.batch_size].to(device)

    def train_step(opts):
        with c.autocast(device):
            loss = sft_loss(model, xb, yb)
        model.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    adamw = optimizers(model, s)
    dt = timed(lambda: train_step(adamw), cfg.repeats)
    opts = optimizers(model, SFTConfig(optimizer="muon"))
    dt_muon = timed(lambda: train_step(opts), cfg.repeats)
    tokens = xb.numel()  # every position is computed, padding included
    L, D, T = s.n_layer, s.n_embd, s.max_len
    flops = 6 * n_params * tokens + 12 * L * D * T * tokens  # weights + attention (fwd + bwd)
    print(f"train: {n_params / 1e6:.2f}M parameters, {dt * 1000:.0f} ms/step,"
          f" {tokens / dt:,.0f} tokens/s, {flops / dt / 1e9:.0f} GFLOP/s ="
          f" {100 * flops / dt / peak:.0f}% of the {name} matmul peak (MFU);"
          f" with --optimizer muon {dt_muon * 1000:.0f} ms/step")

    # sampling: common.sample() against generate(), same model, prompts and length
    model.eval()
    prompt_ids = [p[:8] for p in c.prompts("eval", enc, cfg.batch_size)]
    prompt_ids = [[enc.eot_token] * (8 - len(p)) + p for p in prompt_ids]  # equal lengths
    n_new = cfg.batch_size * cfg.max_new_tokens

    def ours():  # no end-of-text id: every response runs to max_new_tokens, as generate's below
        model.config.eos_token_id = -1
        with c.autocast(device):
            c.sample(model, prompt_ids, cfg.max_new_tokens)
        model.config.eos_token_id = enc.eot_token

    prompt = torch.tensor(prompt_ids, device=device)

    def hf():
        with torch.no_grad(), c.autocast(device):
            model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                           max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.max_new_tokens,
                           pad_token_id=model.config.pad_token_id)
    t_ours, t_hf = timed(ours, cfg.repeats), timed(hf, cfg.repeats)
    print(f"sample: common.sample {n_new / t_ours:,.0f} tokens/s | generate()"
          f" {n_new / t_hf:,.0f} tokens/s | speed-up {t_hf / t_ours:.2f}×")


if __name__ == "__main__":
    c.run(main)
