"""lib/golds.py: the gold rewards and the labeler (re-exported by common.py).

VADER's compound sentiment is the gold reward every figure reports (the DPO paper's kind of
gold); the reader's gold discounts it by repetition (docs/goodhart.md: Goodhart's law needs a
gold that the proxy's shortcut does not also maximise); the learned gold is a sentiment
classifier trained on people's star labels (docs/goodhart_design.md); the labeler turns a gold
into noisy Bradley–Terry rankings.
"""
import functools, os, re

import torch

from lib.data import tokenizer
from lib.process import die


@functools.lru_cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def gold_reward(texts):
    """r*(x, y): VADER's compound sentiment in [-1, 1] of each review text (prompt + response)."""
    return torch.tensor([_vader().polarity_scores(t)["compound"] for t in texts])


def repetition(text, n=2):
    """rep-n (Welleck et al. 2019): the share of a text's n-grams of words and punctuation marks
    that repeat an earlier one, 1 − distinct/all; 0 for a text with no n-gram."""
    words = re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())
    grams = list(zip(*(words[i:] for i in range(n))))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def reader_reward(texts, vader=None):
    """The reader's gold (docs/goodhart.md): VADER's sentiment discounted by repetition,
    (1 + r*)(1 − rep-2) − 1 in [−1, 1]: a text without repeats keeps VADER's score; a text
    whose word pairs repeat, as a pile of praise does, loses in proportion. vader: r* if
    computed."""
    vader = gold_reward(texts) if vader is None else vader
    fluency = torch.tensor([1 - repetition(t) for t in texts], dtype=vader.dtype)
    return (1 + vader) * fluency - 1


GOLDS = {"vader": gold_reward, "reader": reader_reward}  # the gold functions, by name
GOLD_NAMES = [*GOLDS, "learned"]  # a --gold flag's choices: learned is <out>/gold (gold_fn)
GOLD_TOKENS = 48  # what the learned gold reads of a text: its first 48 tokens


def gold_fn(name, out):
    """The gold function (texts → rewards) a --gold flag names: GOLDS', or the learned gold in
    <out>/gold. Where <out>/heldout holds a reward model (docs/goodhart_design.md §10), the
    learned gold carries it as .heldout, a text scorer the evaluation reports beside the gold."""
    if name != "learned":
        return GOLDS[name]
    gold, heldout = learned_gold(os.path.join(out, "gold")), os.path.join(out, "heldout")
    if not os.path.isfile(os.path.join(heldout, "report.json")):
        return gold

    def with_heldout(texts):
        return gold(texts)
    with_heldout.heldout = learned_gold(heldout, None)
    return with_heldout


@functools.lru_cache
def learned_gold(gold_dir, max_tokens=GOLD_TOKENS):
    """The learned gold of docs/goodhart_design.md, the sentiment classifier in gold_dir (trained
    by experiments/gao.py), as a gold function: a text's reward is the classifier's logit on its
    first max_tokens tokens (None: all), read at the last of them, in fp32 whatever the run's
    precision. Any reward model reads a text so (a held-out proxy: max_tokens None)."""
    from transformers import GPT2ForSequenceClassification
    if not os.path.isfile(os.path.join(gold_dir, "report.json")):
        die(f"--gold learned: {gold_dir} holds no finished gold; train it with `python -m"
            f" experiments --experiment gao-gold --out {os.path.dirname(gold_dir) or '.'}`")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2ForSequenceClassification.from_pretrained(gold_dir, dtype=torch.float32)
    model = model.to(device).eval()
    enc, pad_id = tokenizer(model.config.bpe_ranks), model.config.pad_token_id

    @torch.no_grad()
    def learned(texts, batch=256):
        scores = []
        for j in range(0, len(texts), batch):
            rows = [enc.encode_ordinary(t)[:max_tokens] or [enc.eot_token]
                    for t in texts[j:j + batch]]
            tokens = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
            for i, r in enumerate(rows):  # right-padded: HF reads each row's last real token
                tokens[i, :len(r)] = torch.tensor(r)
            with torch.autocast(device, enabled=False):
                logits = model(input_ids=tokens.to(device), attention_mask=(tokens != pad_id).to(
                    device).long()).logits
            scores.append(logits.squeeze(-1).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
    return learned


def labeler_scores(gold, tau, generator=None):
    """How the labeler sees responses: r*/τ + Gumbel noise. Sorting them is a Plackett–Luce
    ranking, so any two are ordered as Bradley–Terry says, P(y1 ≻ y2) = σ((r*1 − r*2)/τ);
    τ = 0 is the noiseless labeler (r* itself)."""
    gold = torch.as_tensor(gold, dtype=torch.float64).cpu()
    if tau == 0:
        return gold
    u = torch.rand(gold.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return gold / tau - torch.log(-torch.log(u))
