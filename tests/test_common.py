"""Unit tests of common.py's plumbing on a tiny random model (no network, seconds)."""
import copy, math, os

import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
from conftest import spy
from lib import config


@pytest.fixture(scope="module")
def enc():
    return c.tokenizer(512)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return c.build_model(512, n_layer=2, n_head=2, n_embd=32, n_positions=64).eval()


def test_tokenizer_round_trip_on_real_reviews():
    reviews = c.imdb()["eval"][:100]
    for n_ranks in (512, 4096, 50256):
        enc = c.tokenizer(n_ranks)
        for text in reviews:
            ids = enc.encode_ordinary(text)
            assert max(ids) < n_ranks and enc.decode(ids) == text
    full, small = c.tokenizer(50256), c.tokenizer(4096)
    assert full.eot_token == 50256 and small.eot_token == 4096  # GPT-2's own id at full size
    # a rank prefix keeps GPT-2 ids: every small-vocabulary token means the same bytes
    for i in small.encode_ordinary(reviews[0]):
        assert small.decode_single_token_bytes(i) == full.decode_single_token_bytes(i)
    # more ranks → fewer tokens for the same text
    assert len(full.encode_ordinary(reviews[0])) < len(small.encode_ordinary(reviews[0]))


def test_imdb_split_and_prompts(enc):
    data = c.imdb()
    assert len(data["train"]) > 22800 and len(data["valid"]) == len(data["eval"]) == 1000
    assert not set(data["eval"]) & set(data["train"])
    assert not any("<br" in t for t in data["train"][:2000])
    p = c.prompts("eval", enc, 50)
    assert [len(x) for x in p[:7]] == [2, 3, 4, 5, 6, 7, 8]
    assert p == c.prompts("eval", enc, 50)  # deterministic


def test_distinct_pad_and_eot(model):
    cfg = model.config
    assert cfg.eos_token_id == 512 and cfg.pad_token_id == 513 and cfg.vocab_size >= 514


def test_sampler_lengths_and_masks(model, enc):
    prompt_ids = c.prompts("eval", enc, 24)
    torch.manual_seed(0)
    tokens, mask = c.sample(model, prompt_ids, max_new_tokens=12)
    P = tokens.shape[1] - mask.shape[1]
    assert P == 8 and mask.shape[1] <= 12
    eot, pad = model.config.eos_token_id, model.config.pad_token_id
    for row, m, p in zip(tokens, mask, prompt_ids):
        assert row[P - len(p):P].tolist() == p and (row[:P - len(p)] == pad).all()
        resp = row[P:]
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # mask = a prefix of the response
        assert (resp[n:] == pad).all()  # nothing but padding after the response
        assert not (resp[:n - 1] == eot).any()  # end-of-text only as the last real token
        assert (resp[:n] != pad).all()
    # with a model that always says end-of-text, every response is exactly that one token
    stopper = copy.deepcopy(model)
    with torch.no_grad():
        stopper.transformer.ln_f.weight.zero_(), stopper.transformer.ln_f.bias.fill_(1.0)
        stopper.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
        stopper.lm_head.weight[eot] = 10.0  # logit 320 for end-of-text, 0 for the rest
    tokens, mask = c.sample(stopper, prompt_ids, max_new_tokens=12)
    assert mask.shape[1] == 1 and (tokens[:, -1] == eot).all()


def test_kv_cache_matches_full_forward(model, enc):
    """The cached sampler step computes the same logits as the Hugging Face model."""
    torch.manual_seed(1)
    tokens, mask = c.sample(model, c.prompts("eval", enc, 6), max_new_tokens=10)
    P, B = tokens.shape[1] - mask.shape[1], len(tokens)
    with torch.no_grad():
        full = model.lm_head(c.forward(model, tokens))  # (B, L, V)
        key_ok = tokens != model.config.pad_token_id
        cache = [(torch.zeros(B, 2, tokens.shape[1], 16), torch.zeros(B, 2, tokens.shape[1], 16))
                 for _ in model.transformer.h]
        n_real = key_ok[:, :P].sum(1, keepdim=True)
        logits = c._cached_step(model, tokens[:, :P], (key_ok[:, :P].cumsum(1) - 1).clamp(min=0),
                                key_ok, cache, 0)
        torch.testing.assert_close(logits, full[:, P - 1], atol=1e-4, rtol=1e-4)
        for t in range(3):
            logits = c._cached_step(model, tokens[:, P + t:P + t + 1], n_real + t, key_ok, cache,
                                    P + t)
            torch.testing.assert_close(logits[mask[:, t]], full[:, P + t][mask[:, t]],
                                       atol=1e-4, rtol=1e-4)


def test_logprobs_against_hand_computation(model):
    prompt, response = [5, 17, 300], [42, 7, 512]
    tokens, mask = c.collate([prompt, [9]], [response, [3]], model.config.pad_token_id)
    logprobs, entropy = c.token_logprobs(model, tokens, n_prompt=3)
    # by hand: one unpadded forward, softmax, pick the next token
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, :, :513]  # real tokens
        probs = logits.softmax(-1)
    hand = [math.log(probs[2 + t, y].item()) for t, y in enumerate(response)]
    torch.testing.assert_close(logprobs[0].detach(), torch.tensor(hand), atol=1e-4, rtol=0)
    hand_entropy = -(probs[2] * probs[2].log()).sum()
    torch.testing.assert_close(entropy[0, 0].detach(), hand_entropy, atol=1e-4, rtol=0)
    seq = c.response_logprobs(logprobs, mask)  # Σ_t, as dpo.py's batch_logps sums it
    torch.testing.assert_close(seq[0].detach(), torch.tensor(sum(hand)), atol=1e-4, rtol=0)
    # the second row's padding adds nothing
    torch.testing.assert_close(seq[1], logprobs[1, 0])
    # temperature divides the logits
    lp2, _ = c.token_logprobs(model, tokens, 3, temperature=2.0)
    hand2 = (logits[2] / 2).log_softmax(-1)[response[0]]
    torch.testing.assert_close(lp2[0, 0].detach(), hand2, atol=1e-4, rtol=0)


def test_reward_read_at_last_real_token(tmp_path, model):
    model.save_pretrained(tmp_path)
    rm = c.load_model(str(tmp_path), GPT2ForSequenceClassification, num_labels=1).eval()
    pad = rm.config.pad_token_id
    seq = [11, 22, 33, 44, 512]
    alone = c.reward(rm, torch.tensor([seq]))
    # left padding, right padding, both: the same reward
    batch = torch.tensor([[pad, pad] + seq, seq + [pad, pad], [pad] + seq + [pad]])
    torch.testing.assert_close(c.reward(rm, batch), alone.expand(3), atol=1e-5, rtol=0)
    # and it is the head applied to the hidden state of the last real token, by hand
    with torch.no_grad():
        hidden = rm.transformer(torch.tensor([seq])).last_hidden_state[0, -1]
        torch.testing.assert_close(alone[0], rm.score(hidden)[0], atol=1e-5, rtol=0)
    assert c.last_index(batch, pad).tolist() == [6, 4, 5]


def test_gold_reward_is_vader_sentiment():
    r = c.gold_reward(["This movie was wonderful, I loved it.", "Terrible, boring film.", "It."])
    assert r[0] > 0.5 and r[1] < -0.5 and r[2] == 0


def test_save_is_atomic(tmp_path, model, monkeypatch):
    path = str(tmp_path / "ckpt")
    c.save_model(model, path)
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert not os.path.exists(os.path.join(path, ".tmp"))
    open(os.path.join(path, "metrics.jsonl"), "w").write("{}\n")
    c.save_model(model, path)  # saving again keeps the other files of the directory
    assert os.path.exists(os.path.join(path, "metrics.jsonl"))

    def crash(self, save_dir, **kwargs):  # a crash (or Ctrl-C) in the middle of writing
        os.makedirs(save_dir, exist_ok=True)
        raise KeyboardInterrupt
    monkeypatch.setattr(type(model), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        c.save_model(model, path)
    reloaded = c.load_model(path)  # the previous checkpoint is intact
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)


def test_load_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        c.load_model(str(tmp_path / "nowhere"))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint in") and "\n" not in err
    (tmp_path / "bad").mkdir()  # a corrupt checkpoint: config.json, broken weights
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(SystemExit):
        c.load_model(str(tmp_path / "bad"))
    err = capsys.readouterr().err.strip()
    assert "unreadable" in err and "\n" not in err
    with pytest.raises(SystemExit):  # a hub name while offline (HF_HUB_OFFLINE=1 in conftest)
        c.load_model("gpt2-not-cached-here")
    err = capsys.readouterr().err.strip()
    assert "hub" in err and "\n" not in err


def test_parse_config(capsys):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        lr: float = 1e-3  # learning rate
        online: bool = False  # sample pairs from the policy
        loss: str = "sigmoid"  # which loss
    cfg = c.parse_config(Cfg, "doc", {"loss": ["sigmoid", "ipo"]}, ["--lr", "0.5", "--online"])
    assert cfg == Cfg(lr=0.5, online=True)
    for bad in (["--lr", "fast"], ["--nope", "1"], ["--loss", "mse"]):
        with pytest.raises(SystemExit):
            c.parse_config(Cfg, "doc", {"loss": ["sigmoid", "ipo"]}, bad)
    err = capsys.readouterr().err
    assert "--lr" in err and "--nope" in err and "'sigmoid', 'ipo'" in err


def test_sequence_kl_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -7.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -9.0], [-2.0, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the first response has 2 tokens
    kl = c.sequence_kl(logprobs, ref_logprobs, mask)
    torch.testing.assert_close(kl, torch.tensor([0.5 - 1.0, -1.0 + 1.0 - 6.0]))  # may be < 0


def test_evaluation_kl_is_the_sequence_kl_of_its_samples(model, enc):
    """The shared evaluation's KL is mean Σ_t (log π − log π_ref) recomputed on the same samples:
    0 for π = π_ref, positive for a sharpened copy of the model (its logits × 3)."""
    prompt_ids = c.prompts("eval", enc, 16)
    same = c.evaluate(model, model, enc, prompt_ids, max_new_tokens=8)
    assert same["kl"] == 0.0 and same["kl_se"] == 0.0
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        sharp.lm_head.weight = torch.nn.Parameter(3 * model.lm_head.weight)
    ev = c.evaluate(sharp, model, enc, prompt_ids, max_new_tokens=8)
    torch.manual_seed(1234)  # evaluate()'s fixed sampling seed: the same samples again
    with torch.no_grad(), c.autocast(torch.device("cpu")):
        tokens, mask = c.sample(sharp, prompt_ids, 8)
        P = tokens.shape[1] - mask.shape[1]
        logprobs, _ = c.token_logprobs(sharp, tokens, P)
        ref_logprobs, _ = c.token_logprobs(model, tokens, P)
    hand = ((logprobs - ref_logprobs) * mask).sum(1).mean().item()
    assert ev["kl"] == pytest.approx(hand, rel=1e-4) and ev["kl"] > 0.1


def test_evaluation_gold_is_the_mean_over_samples_and_its_standard_error(model, enc,
                                                                         monkeypatch):
    """J(θ) = E[R] is estimated by the mean reward over N sampled responses (deck 001), with the
    standard error sd/√N: recomputed from the gold of each sample that evaluate() scored."""
    scored = spy(monkeypatch, c, "gold_reward")
    ev = c.evaluate(model, model, enc, c.prompts("eval", enc, 16), max_new_tokens=8,
                    batch_size=8)
    each = torch.cat([call["out"] for call in scored]).float()
    assert len(scored) == 2 and len(each) == 16  # two batches of 8 responses
    assert ev["gold"] == pytest.approx(each.mean().item(), rel=1e-6)
    assert ev["gold_se"] == pytest.approx(each.std().item() / 4, rel=1e-6)  # √16 = 4
    assert each.std() > 0


def test_sampled_tokens_have_no_gradient_path_only_their_log_probabilities_do(model, enc):
    """Deck 000: RL is needed because sampling is not differentiable. The sampled tokens are
    integers with no gradient, and so is any reward computed from their text; log π(y|x) of
    those tokens has one, which is what REINFORCE differentiates."""
    model.requires_grad_(True)
    tokens, mask = c.sample(model, c.prompts("eval", enc, 4), 8)
    assert tokens.dtype == torch.long and not tokens.requires_grad and tokens.grad_fn is None
    assert not c.gold_reward([c.decode(enc, t) for t in tokens.tolist()]).requires_grad
    P = tokens.shape[1] - mask.shape[1]
    logprobs, _ = c.token_logprobs(model, tokens, P)
    c.response_logprobs(logprobs, mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--lr", "-1"], "--lr -1.0: must be > 0"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--beta", "-0.1"], "--beta -0.1: must not be negative"),
    (["--seed", "0"], None),  # 0 is a fine seed
])
def test_flags_are_range_checked(flags, message, capsys):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        steps: int = 10  # optimiser steps
        lr: float = 1e-3  # learning rate
        beta: float = 0.1  # KL coefficient
        seed: int = 1  # random seed
    if message is None:
        assert c.parse_config(Cfg, "doc", argv=flags).seed == 0
        return
    with pytest.raises(SystemExit) as e:
        c.parse_config(Cfg, "doc", argv=flags)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == f"error: {message}"


def test_precision_is_bf16_only_where_native(monkeypatch, capsys):
    monkeypatch.setenv(c.PRECISION_ENV, "auto")  # restored after the test, as is _bf16
    monkeypatch.setattr(config, "_bf16", {})
    cpu = torch.device("cpu")
    monkeypatch.setattr(config, "native_bf16", lambda device: (False, "no native bf16"))
    c.setup(0)
    with c.autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    assert capsys.readouterr().out == "device cpu, fp32 (no native bf16)\n"
    with pytest.raises(SystemExit):  # asking for an emulated bf16: one line, no traceback
        c.setup(0, "bf16")
    err = capsys.readouterr().err.strip()
    assert "--precision bf16" in err and "no native bf16" in err and "\n" not in err
    monkeypatch.setattr(config, "native_bf16", lambda device: (True, "AVX512-BF16"))
    monkeypatch.setenv(c.PRECISION_ENV, "auto")
    c.setup(0)
    with c.autocast(cpu):
        assert torch.is_autocast_enabled("cpu")
    assert os.environ[c.PRECISION_ENV] == "bf16"  # what the runs it starts will use
    c.setup(0, "fp32")
    with c.autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    assert "fp32 (as asked" in capsys.readouterr().out


def test_lr_schedule_by_hand():
    lr, warmup, steps = 1e-3, 10, 110
    assert c.lr_at(0, lr, warmup, steps) == pytest.approx(1e-4)  # warmup: (step + 1)/warmup
    assert c.lr_at(9, lr, warmup, steps) == pytest.approx(1e-3)
    assert c.lr_at(10, lr, warmup, steps) == pytest.approx(1e-3)  # cosine from the peak ...
    assert c.lr_at(60, lr, warmup, steps) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half
    assert c.lr_at(110, lr, warmup, steps) == pytest.approx(1e-4)  # ... to lr/10
    assert c.lr_at(60, lr, warmup, steps, cosine=False) == pytest.approx(1e-3)  # constant
    assert c.lr_at(4, lr, warmup, steps, cosine=False) == pytest.approx(5e-4)  # still warms up


def test_evaluation_schedule_is_dense_at_the_start():
    steps = [s for s in range(1, 101) if c.evaluates_at(s, 10, 100)]
    assert steps == [1, 2, 4, 8, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [s for s in range(1, 8) if c.evaluates_at(s, 3, 7)] == [1, 2, 3, 6, 7]
