"""Every saved stage loads as it is with transformers' Auto classes and pipeline(), offline."""
import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer)
from transformers import pipeline as hf_pipeline  # `pipeline` is the fixture of tests/

import common as c


@pytest.mark.parametrize("n_ranks", [1024, 4096, 50256])
def test_hf_tokenizer_encodes_exactly_as_ours(n_ranks):
    tok, enc = c.hf_tokenizer(n_ranks), c.tokenizer(n_ranks)
    for text in c.imdb()["eval"][:200]:
        ids = tok(text)["input_ids"]
        assert ids == enc.encode_ordinary(text) and tok.decode(ids) == text
    assert tok.eos_token_id == enc.eot_token == n_ranks and tok.pad_token_id == n_ranks + 1
    assert tok.decode([5, n_ranks], skip_special_tokens=True) == enc.decode([5])


def test_saved_stages_load_with_auto_classes_and_pipeline(pipeline):
    sft_dir, rm_dir = str(pipeline / "sft"), str(pipeline / "reward_model")
    tok = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    assert tok.pad_token_id == model.config.pad_token_id and tok.eos_token_id == 1024
    generate = hf_pipeline("text-generation", model=sft_dir, device="cpu")
    out = generate("This movie was", max_new_tokens=8, do_sample=True)[0]["generated_text"]
    assert out.startswith("This movie was") and len(out) > len("This movie was")
    # the reward model as a sequence classifier: the same scores as common.reward
    rm_tok = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    texts = [" ".join(t.split()[:12]) for t in c.imdb()["eval"][:6]]
    rm_tok.padding_side = "right"  # HF's classifier reads the last non-padding token from the right
    batch = rm_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hf_scores = rm(**batch).logits[:, 0]
        ours = c.reward(c.load_model(rm_dir, type(rm)).eval(), batch["input_ids"])
    torch.testing.assert_close(hf_scores, ours, atol=1e-4, rtol=1e-4)


def test_a_directory_without_tokenizer_still_loads_and_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    c.build_model(512, 1, 2, 32, 64).save_pretrained(tmp_path)  # weights only: an older layout
    for _ in range(2):
        model = c.load_model(str(tmp_path))
    assert model.config.bpe_ranks == 512
    out = capsys.readouterr().out
    assert out.count("has no tokenizer files") == 1  # said once
    c.save_model(model, str(tmp_path))  # saving again adds the tokenizer
    assert AutoTokenizer.from_pretrained(str(tmp_path)).eos_token_id == 512
