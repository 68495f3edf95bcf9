"""lib/sampler.py: sample responses from a GPT-2 fast, with a KV cache (common.py re-exports it).

Every batch uses the layout of common.py: tokens (B, P+T) = prompt left-padded to P, then the
response right-padded to T; mask (B, T) is True on the response tokens the policy generated
(end-of-text included, padding excluded). The cached forward is the same math as the Hugging
Face model (tested against it), without generate()'s per-step bookkeeping.
"""
import torch

NOISE = None  # the generator of the sampling noise: None = torch's global one (parallel.py sets
# each rank's own under torchrun); a generator passed to sample() takes its place


def _cached_step(model, ids, pos, key_ok, cache, t0):
    """One GPT-2 forward of L new tokens that reads the keys/values of earlier tokens from the
    cache instead of recomputing them: the same math as the HF model (tested against it)."""
    body, (B, L) = model.transformer, ids.shape
    x = body.wte(ids) + body.wpe(pos)  # (B, L, D)
    causal = torch.ones(L, t0 + L, dtype=torch.bool, device=ids.device).tril(t0)
    keep = causal & key_ok[:, None, None, :t0 + L]  # (B, 1, L, t0+L)
    keep[..., t0:] |= torch.eye(L, dtype=torch.bool, device=ids.device)  # pad rows see themselves
    for block, (K, V) in zip(body.h, cache):
        qkv = block.attn.c_attn(block.ln_1(x)).view(B, L, 3, K.shape[1], -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, hd)
        K[:, :, t0:t0 + L], V[:, :, t0:t0 + L] = k, v  # (B, H, L, hd) into the cache
        att = (q @ K[:, :, :t0 + L].transpose(-1, -2)) * block.attn.scaling
        y = att.masked_fill(~keep, float("-inf")).softmax(-1) @ V[:, :, :t0 + L]
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, L, -1))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(body.ln_f(x[:, -1])).float()  # logits of the next token (B, V)


@torch.no_grad()
def sample(model, prompt_ids, max_new_tokens, temperature=1.0, generator=None):
    """Sample responses to a list of prompts (token-id lists) until end-of-text or max_new_tokens.
    Returns tokens (B, P+T) and the response mask (B, T), T = the longest response. Faster than
    generate(): no per-step mask/cache bookkeeping, and inverse-CDF sampling (multinomial's
    exponential draws cost more than the whole forward pass of a tiny model on a CPU)."""
    cfg, device = model.config, model.lm_head.weight.device
    eot, pad, B, P = cfg.eos_token_id, cfg.pad_token_id, len(prompt_ids), max(map(len, prompt_ids))
    tokens = torch.full((B, P + max_new_tokens), pad, dtype=torch.long, device=device)
    for i, p in enumerate(prompt_ids):
        tokens[i, P - len(p):P] = torch.tensor(p)
    key_ok = tokens != pad  # (B, P+T) which positions hold real tokens
    n_real = key_ok[:, :P].sum(1, keepdim=True)
    H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
        else model.lm_head.weight.dtype
    cache = [(torch.zeros(B, H, P + max_new_tokens, hd, device=device, dtype=dtype),
              torch.zeros(B, H, P + max_new_tokens, hd, device=device, dtype=dtype))
             for _ in model.transformer.h]
    done = torch.zeros(B, 1, dtype=torch.bool, device=device)
    logits = _cached_step(model, tokens[:, :P], (key_ok[:, :P].cumsum(1) - 1).clamp(min=0),
                          key_ok, cache, 0)
    for t in range(max_new_tokens):
        real = logits[:, :cfg.bpe_ranks + 1]  # ranks + end-of-text: never padding
        cdf = (real / temperature).softmax(-1).cumsum(-1)  # (B, V)
        u = torch.rand(B, 1, device=device, generator=generator or NOISE) * cdf[:, -1:]
        nxt = torch.searchsorted(cdf, u).clamp(max=cfg.bpe_ranks)  # (B, 1)
        nxt = nxt.masked_fill(done, pad)
        tokens[:, P + t] = nxt[:, 0]
        key_ok[:, P + t] = ~done[:, 0]
        done |= nxt == eot
        if done.all() or t == max_new_tokens - 1:
            break
        logits = _cached_step(model, nxt, n_real + t, key_ok, cache, P + t)
    T = t + 1
    return tokens[:, :P + T], tokens[:, P:P + T] != pad


def sample_batched(model, prompt_ids, max_new_tokens, batch_size, temperature=1.0,
                   generator=None):
    """sample() in chunks; returns a list of (tokens, mask) pairs (their P and T differ)."""
    return [sample(model, prompt_ids[i:i + batch_size], max_new_tokens, temperature, generator)
            for i in range(0, len(prompt_ids), batch_size)]
