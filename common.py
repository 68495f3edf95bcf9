"""common.py: the shared plumbing of the RLHF scripts. No algorithm lives here.

Model build/load/save, log-probs and KL estimators, reward models (one, or an ensemble: lib/), the
shared evaluation (docs/metrics.md), and the steps every RL script shares. The plumbing
(flags and precision, the process, stage records, the results file, the log, plots, data and
tokenizer, the sampler, the golds, data parallelism, Muon) lives in lib/, one concern a file;
the lines below the imports re-export it, so that a script imports common alone.
Every batch uses one layout: tokens (B, P+T) = prompt left-padded to P, then the response
right-padded to T; mask (B, T) is True on the response tokens the policy generated (end-of-text
included, padding excluded).
"""
import math, os, shutil

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from transformers.activations import ACT2FN
from transformers.utils import logging as hf_logging

from lib import parallel, stages
# The plumbing in lib/, one concern a file, re-exported here so that a script imports common alone
# (`c.name`); each line names the file that defines what it brings.
from lib.config import PRECISION_ENV, autocast, native_bf16, parse_config, setup  # noqa: F401
from lib.process import die, run, run_child  # noqa: F401
from lib.stages import (build_args, finish_stage, read_record, record_id, require,  # noqa: F401
                        stage_file, start_stage)
from lib.results import (Results, append_row, check_space, finish_run, has,  # noqa: F401
                         pipeline_at, read_json, read_jsonl, read_results, replace_rows,
                         run_key)
from lib.logger import Logger, finish_rl, mean_stats, write_card  # noqa: F401
from lib.plots import plot_metrics, plot_scatter, save_figure  # noqa: F401
from lib.data import (check_positions, decode, hf_tokenizer, imdb, prompts,  # noqa: F401
                      read_comparisons, read_preferences, tokenizer, write_preferences)
from lib.sampler import _cached_step, sample, sample_batched  # noqa: F401
from lib.golds import (GOLD_NAMES, GOLD_TOKENS, GOLDS, gold_fn, gold_reward,  # noqa: F401
                       labeler_scores, reader_reward, repetition)
from lib.parallel import all_mean, average_gradients, gather, rank, share, split_map, world  # noqa
from lib.muon import Muon  # noqa: F401 (sft.py --optimizer muon)
from lib.ensemble import RewardEnsemble, ensemble_reward, read_ensemble  # noqa: F401

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
# ---------------------------------------------------------------- models

def _attention():
    """Plain matmul attention on CPU (faster than SDPA's kernels at T ≈ 64 here), SDPA on CUDA."""
    return "sdpa" if torch.cuda.is_available() else "eager"


FUSED_GELU = "gelu_pytorch_tanh"  # GPT-2's "gelu_new" in one kernel: 13% off an SFT step on a CPU


def build_model(n_ranks, n_layer, n_head, n_embd, n_positions):
    """A GPT-2 from scratch; the vocabulary (ranks + end-of-text + padding) rounded up to 64."""
    config = GPT2Config(vocab_size=64 * math.ceil((n_ranks + 2) / 64), n_positions=n_positions,
                        n_layer=n_layer, n_head=n_head, n_embd=n_embd, bpe_ranks=n_ranks,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function=FUSED_GELU,
                        bos_token_id=n_ranks, eos_token_id=n_ranks, pad_token_id=n_ranks + 1)
    config._attn_implementation = _attention()
    return GPT2LMHeadModel(config)


_said_no_tokenizer = set()  # directories whose missing tokenizer was mentioned already


def load_model(name_or_dir, cls=GPT2LMHeadModel, **overrides):
    """Any Hugging Face GPT-2 checkpoint (hub name or directory), dropout off (as RLHF wants)."""
    looks_local = os.sep in name_or_dir or name_or_dir.startswith(".")
    # deleting a stage's directory rebuilds it (require); nothing rebuilds any other directory
    fix = "delete the directory so that it is rebuilt" if os.path.abspath(name_or_dir) in \
        stages._ids else "give a directory that holds a Hugging Face checkpoint"
    if looks_local and not os.path.isdir(name_or_dir):
        die(f"no checkpoint in {name_or_dir}: there is no such directory; check the path")
    if looks_local and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        die(f"no checkpoint in {name_or_dir} (config.json missing); {fix}")
    try:
        model = cls.from_pretrained(name_or_dir, dtype=torch.float32, resid_pdrop=0.0,
                                    attn_implementation=_attention(),
                                    embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    except Exception as e:  # the user-facing boundary: one line, whatever went wrong
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        if os.path.isdir(name_or_dir):
            die(f"the checkpoint in {name_or_dir} is unreadable ({why}); {fix}")
        die(f"cannot load '{name_or_dir}' ({why}): it is neither a checkpoint directory nor"
            " reachable on the Hugging Face hub (offline?); pass a local directory, or go"
            " online once so the hub copy gets cached")
    if model.config.activation_function == "gelu_new":  # the same function, fused (FUSED_GELU)
        model.config.activation_function = FUSED_GELU
        for block in model.transformer.h:
            block.mlp.act = ACT2FN[FUSED_GELU]
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        die(f"the checkpoint in {name_or_dir} has non-finite weights (corrupt); {fix}")
    stages.still_as_required(name_or_dir)  # not rebuilt since this run checked it
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
    the other files of the directory (metrics, plots) stay. The tokenizer is saved beside it.
    Under torchrun rank 0 alone saves (the weights are the same on every rank)."""
    if rank() > 0:
        return
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


def masked_mean(x, mask, dim=None, all_ranks=False):
    """Mean of x over the real (mask = 1) positions only (along dim, or over all of them; with
    all_ranks, over those of every rank's share of the batch under torchrun)."""
    if dim is None:
        total, count = (x * mask).sum(), mask.sum()
        if all_ranks and world() > 1:
            total, count = (v.to(x.dtype).to(x.device) for v in parallel.all_sum(total, count))
        return total / count.clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def lr_at(step, lr, warmup, steps, cosine=True):
    """Linear warmup over `warmup` steps, then cosine decay from lr to lr/10 at the last step
    (or constant lr with cosine=False); step counts from 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if not cosine:
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def last_index(tokens, pad_id):
    """Index of the last real (non-padding) token of each row: (B,)."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return ((tokens != pad_id) * pos).argmax(1)


def reward(rm, tokens):
    """Scalar reward r_φ(x, y) read at the last real token of each sequence: (B,); of an
    ensemble (RewardEnsemble), its members' rewards combined."""
    if isinstance(rm, RewardEnsemble):  # (each member in units of its sd on π_SFT's samples)
        rewards = torch.stack([reward(m, tokens) for m in rm.members])  # (M, B)
        return ensemble_reward(rewards / rm.sd.to(rewards.device)[:, None], rm.combine)
    hidden = forward(rm, tokens)  # (B, L, D)
    last = hidden[torch.arange(len(tokens)), last_index(tokens, rm.config.pad_token_id)]
    return rm.score(last).squeeze(-1).float()


def collate(prompt_ids, response_ids, pad_id):
    """Token lists → the batch layout: tokens (B, P+T), prompts left-padded, responses
    right-padded; mask (B, T) True on response tokens."""
    P, T = max(map(len, prompt_ids)), max(map(len, response_ids))
    tokens = torch.full((len(prompt_ids), P + T), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        tokens[i, P - len(p):P + len(r)] = torch.tensor(p + r)
    return tokens, tokens[:, P:] != pad_id


# ---------------------------------------------------------------- the steps every RL script shares

GRAD_CLIP = 1.0  # max gradient norm of every update


def score_responses(kind, rm, enc, tokens, gold=gold_reward):
    """What the policy maximises: r_φ(x, y) ('model'), or the gold reward itself ('gold')."""
    if kind == "gold":
        return gold([decode(enc, t) for t in tokens.tolist()]).to(tokens.device)
    return reward(rm, tokens)


def load_reward_model(rm_dir, policy):
    """r_φ (frozen), refused in one line if it reads another vocabulary than the policy's; an
    ensemble's members, if rm_dir holds ensemble.json."""
    if (spec := read_ensemble(rm_dir)) is not None:
        members, combine, sd = spec
        return RewardEnsemble([load_reward_model(m, policy) for m in members], combine, sd)
    rm = load_model(rm_dir, GPT2ForSequenceClassification).eval().requires_grad_(False)
    if rm.config.bpe_ranks != policy.config.bpe_ranks:
        die(f"{rm_dir} reads {rm.config.bpe_ranks} BPE ranks, the policy {policy.config.bpe_ranks}:"
            f" it was built for another SFT model; rebuild it (python reward_model.py)")
    return rm


def sequence_reward(score, kl, beta):
    """R_i = r_φ(x, y_i) − β·KL_i: the RLHF objective's reward of a whole response (bandit)."""
    return score - beta * kl


def minibatches(n, size, epoch=0):
    """Row slices of the update's minibatches: in order on the first pass (its first minibatch
    is the rollout's own forward, so the ratio is exactly 1), shuffled on later passes. size is
    the global minibatch: under torchrun a rank's n rows are its share, and so are its slices."""
    size //= world()
    chunks = [slice(j, j + size) for j in range(0, n, size)]
    return chunks if epoch == 0 else [chunks[j] for j in torch.randperm(len(chunks)).tolist()]


def rollout_logprobs(model, tokens, n_prompt, size, temperature):
    """log π of every response token (B, T), in the minibatches the update uses (bit-identical
    to the update's first forward)."""
    return torch.cat([token_logprobs(model, tokens[s], n_prompt, temperature)[0]
                      for s in minibatches(len(tokens), size)])


def update_stats(logprobs, old_logprobs, mask, clip):
    """Diagnostics of one update, masked means: the ratio ρ = π_θ/π_old, the fraction clipped
    (|ρ − 1| > ε) and approx_kl = (ρ − 1) − log ρ, an estimate of KL(π_old‖π_θ) (the
    trust region; the objective's KL is to π_ref). Per token, or per response (rloo.py)."""
    log_ratio = logprobs.detach() - old_logprobs
    ratio = log_ratio.exp()
    return {"ratio": masked_mean(ratio, mask).item(),
            "clipfrac": masked_mean(((ratio - 1).abs() > clip).float(), mask).item(),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item()}


class Checkpoint:
    """The policy saved after each finite evaluation (into the stage, or beside the finished one
    until the run finishes: stages.start_stage); says where the last good one is. Given the model,
    it checks at once that the disk can take a checkpoint of it."""

    def __init__(self, out_dir, model=None):
        self.dir, self.step = stages.writing_dir(out_dir), None
        if model is not None:
            check_space(out_dir, model)

    def save(self, model, step):
        save_model(model, self.dir)
        self.step = step

    def __str__(self):
        if self.step is None:
            return "no policy was saved"
        return f"the last good policy (step {self.step}) is in {self.dir}"


def evaluates_at(step, every, steps):
    """Evaluate every `every` steps, at the last, and at the powers of two below `every`: the
    early, low-KL part of each reward–KL curve is where the methods differ most."""
    return step % every == 0 or step == steps or (step < every and step & (step - 1) == 0)


def warn_if_collapsed(metrics, min_entropy=0.05, max_vf_loss=1e3):
    """One line when the policy collapsed (entropy ≈ 0) or PPO's critic blew up."""
    if metrics["entropy"] < min_entropy or metrics.get("vf_loss", 0) > max_vf_loss:
        print(f"warning: the policy looks collapsed (entropy {metrics['entropy']:.3g}, value"
              f" loss {metrics.get('vf_loss', 0):.3g}); its samples are likely one repeated"
              " token; lower --lr", flush=True)


def response_logprobs(logprobs, mask):
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the real response tokens (padding excluded)."""
    return (logprobs * mask).sum(1)


def check_kl(kl, max_kl, step, ckpt):
    """Stop on a KL explosion: the batch's mean KL per response (every rank's) above max_kl."""
    mean = all_mean(kl.mean())
    if mean > max_kl:
        die(f"KL exploded ({mean:.1f} nats > --max-kl {max_kl}) at step {step}; {ckpt};"
            " raise --beta or lower --lr")


def optimizer_step(opt, loss, params, step, ckpt, weight=1.0):
    """Zero the gradients, backward, average them over the ranks (torchrun; each rank's weighted
    by `weight`, e.g. its tokens), clip their norm, step; a non-finite loss ends the run."""
    if not torch.isfinite(loss):
        die(f"non-finite loss at step {step}; {ckpt}; try a lower --lr")
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params, weight)
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()


# ---------------------------------------------------------------- the shared evaluation

@torch.no_grad()
def evaluate(policy, ref, enc, prompt_ids, max_new_tokens, rm=None, batch_size=64, seed=1234,
             gold=gold_reward):
    """The README's evaluation on held-out prompts, temperature 1: gold and proxy reward,
    sequence KL(π‖π_ref) = mean Σ_t [log π − log π_ref] (nats), token entropy, length and
    samples; and the standard errors of the gold, proxy and KL means (gold_se, …) over the
    prompts; a gold other than VADER (gold_fn) also reports VADER's (gold_vader). The sampling
    noise is the evaluation's own (seed): the same at every evaluation,
    and on every rank under torchrun, where each rank scores its share of the batches."""
    was_training = policy.training
    policy.eval()
    noise = torch.Generator(policy.lm_head.weight.device).manual_seed(seed)
    with autocast(policy.lm_head.weight.device):
        batches = sample_batched(policy, prompt_ids, max_new_tokens, batch_size, generator=noise)

    def score(batch):  # each row's numbers, and the texts
        tokens, mask = batch
        P = tokens.shape[1] - mask.shape[1]
        with autocast(tokens.device):
            logprobs, entropy = token_logprobs(policy, tokens, P)
            ref_logprobs, _ = token_logprobs(ref, tokens, P)
            texts = [decode(enc, t) for t in tokens.tolist()]
            vader = gold_reward(texts)
            rows = {"gold": vader if gold is gold_reward else gold(texts).float(),
                    "gold_vader": vader if gold is not gold_reward else None,
                    "gold_reader": reader_reward(texts, vader),  # (and a held-out proxy's:)
                    "heldout": gold.heldout(texts).float() if hasattr(gold, "heldout") else None,
                    "proxy": reward(rm, tokens).cpu() if rm is not None else None,
                    "kl": sequence_kl(logprobs, ref_logprobs, mask).cpu(),
                    "entropy": ((entropy * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu(),
                    "length": mask.sum(1).float().cpu()}
        return rows, texts

    scored = split_map(score, batches)
    rows = {k: torch.cat([r[k] for r, _ in scored]).float() for k, v in scored[0][0].items()
            if v is not None}
    out = {k: v.mean().item() for k, v in rows.items()}
    for k in ("gold", "gold_vader", "gold_reader", "heldout", "proxy", "kl"):  # their means' se
        if k in rows or k == "proxy":
            out[f"{k}_se"] = rows[k].std().item() / math.sqrt(len(rows[k])) if k in rows else None
    out["proxy"] = out.get("proxy")
    out["samples"] = [t for _, texts in scored for t in texts][:8]
    policy.train(was_training)
    return out
