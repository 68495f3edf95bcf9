"""sft.py: the masked loss by hand, and the script run end to end as a user runs it."""
import json, os, signal, subprocess, sys, time

import pytest
import torch
import torch.nn.functional as F

import common as c
from lib.muon import Muon, newton_schulz
import sft
from conftest import ROOT, TINY_SFT, run_script


def test_openings_mask_the_prompt_and_end_with_eot():
    enc = c.tokenizer(512)
    x, y, n_bytes = sft.batch(sft.openings("valid", enc, max_len=64, n=50), enc, 64)
    assert x.shape == y.shape == (50, 64) and n_bytes > 0
    for i in range(50):
        n_prompt = 2 + i % 7
        assert (y[i, :n_prompt - 1] == -100).all()  # no loss on predicting prompt tokens
        assert (y[i, n_prompt - 1:] != -100).any()  # ... but on the response
        assert x[i, 0] != enc.eot_token + 1  # rows start with the review, not padding
        real = y[i][y[i] != -100]
        assert real[-1] == enc.eot_token or len(real) == 64 - n_prompt  # no sentence end
        assert (real[:-1] != enc.eot_token).all()


def test_targets_are_the_inputs_shifted_by_one():
    """Next-token prediction: wherever a target is not masked, it is the following input."""
    enc = c.tokenizer(512)
    x, y, _ = sft.batch(sft.openings("valid", enc, max_len=32, n=20), enc, 32)
    real = y[:, :-1] != -100
    assert real.sum() > 100
    assert (y[:, :-1][real] == x[:, 1:][real]).all()


def test_length_batches_cover_an_epoch_with_little_padding():
    torch.manual_seed(0)
    lengths = torch.randint(5, 65, (1000,))
    batches = sft.length_batches(lengths, batch_size=10, group=5)
    assert all(len(b) == 10 for b in batches) and len(batches) == 100
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))  # every row once
    padding = sum((lengths[b].max() - lengths[b]).sum().item() for b in batches)
    random_padding = sum((lengths[b].max() - lengths[b]).sum().item()
                         for b in torch.randperm(1000).split(10))
    assert padding < random_padding / 3  # sorted runs of 50: far less padding than at random


def test_sft_loss_counts_response_tokens_only():
    torch.manual_seed(0)
    model = c.build_model(512, 1, 2, 32, 64)
    enc = c.tokenizer(512)
    x, y, _ = sft.batch(sft.openings("valid", enc, max_len=32, n=4), enc, 32)
    loss = sft.sft_loss(model, x, y)
    # by hand: mean −log p over the response positions only
    logp = model(x).logits.log_softmax(-1)
    terms = [-logp[i, t, y[i, t]] for i in range(4) for t in range(32) if y[i, t] != -100]
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=0)
    # the prompt's own tokens as targets would change the loss; masked, they change nothing
    unmasked = torch.where(y == -100, torch.cat([x[:, 1:], x[:, :1]], 1), y)
    assert not torch.isclose(F.cross_entropy(model(x).logits.flatten(0, 1), unmasked.flatten()),
                             loss)
    y2 = y.clone()
    y2[:, 0] = -100  # moving nothing that is already masked
    torch.testing.assert_close(sft.sft_loss(model, x, y2), loss)


def test_newton_schulz_maps_each_singular_value_through_the_quintic():
    # diag(3, 4) has singular values 3 and 4; normalised by its Frobenius norm 5: 0.6 and 0.8;
    # one step maps each s to 3.4445 s − 4.7750 s³ + 2.0315 s⁵ (worked by hand below)
    g = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    one = newton_schulz(g, steps=1)
    f = lambda s: 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5
    assert f(0.6) == pytest.approx(1.19327, abs=1e-5) and f(0.8) == pytest.approx(0.97648, abs=1e-5)
    torch.testing.assert_close(one, torch.diag(torch.tensor([f(0.6), f(0.8)])))
    torch.manual_seed(0)
    for shape in [(8, 32), (32, 8)]:  # wide, and tall (orthogonalised through its transpose)
        u = torch.randn(shape)
        o = newton_schulz(u)  # five steps: singular values all near 1, same singular vectors
        assert o.shape == u.shape
        s = torch.linalg.svdvals(o)
        assert 0.6 < s.min() and s.max() < 1.3
        u_, _, vh = torch.linalg.svd(u, full_matrices=False)  # o = U diag(·) Vᵀ: u's vectors
        torch.testing.assert_close(o, u_ @ torch.diag((u_.T @ o @ vh.T).diagonal()) @ vh,
                                   atol=1e-4, rtol=0)


def test_muon_step_by_hand():
    # Nesterov momentum β = 0.95 from rest: buffer = 0.05 g, update = g.lerp(buffer, 0.95)
    # = 0.05 g + 0.95 × 0.05 g = 0.0975 g; Newton–Schulz normalises away the scale, so the step
    # is −lr × √max(1, rows/cols) × newton_schulz(g)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 4))
    g = torch.randn(12, 4)
    before, w.grad = w.detach().clone(), g.clone()
    opt = Muon([w], lr=0.1)
    opt.step()
    with c.autocast(w.device):  # the run's precision, as in the step
        expected = before - 0.1 * 3 ** 0.5 * newton_schulz(0.0975 * g)
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(opt.state[w]["momentum"], 0.05 * g)
    # a second step, gradient g2: buffer = 0.95 × 0.05 g + 0.05 g2 = 0.0475 g + 0.05 g2; update
    # = g2.lerp(buffer, 0.95) = 0.05 g2 + 0.95 buffer = 0.045125 g + 0.0975 g2
    g2, before = torch.randn(12, 4), w.detach().clone()
    w.grad = g2.clone()
    opt.step()
    torch.testing.assert_close(opt.state[w]["momentum"], 0.0475 * g + 0.05 * g2)
    with c.autocast(w.device):
        expected = before - 0.1 * 3 ** 0.5 * newton_schulz(0.045125 * g + 0.0975 * g2)
    torch.testing.assert_close(w.detach(), expected)


def test_muon_takes_the_blocks_matrices_and_one_schedule_drives_both():
    torch.manual_seed(0)
    model = c.build_model(64, n_layer=2, n_head=2, n_embd=32, n_positions=16)
    cfg = sft.Config(optimizer="muon", lr=3e-3, muon_lr=0.02)
    adamw, muon = sft.optimizers(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = [names[id(p)] for g in muon.param_groups for p in g["params"]]
    # 2 blocks × (attention in, attention out, MLP in, MLP out): matrices only
    assert sorted(hidden) == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                              "mlp.c_proj"))
    rest = [names[id(p)] for g in adamw.param_groups for p in g["params"]]
    assert "transformer.wte.weight" in rest and "transformer.h.0.ln_1.weight" in rest
    assert len(hidden) + len(rest) == len(names)  # every parameter in exactly one group
    sft.set_lr([adamw, muon], 1.5e-3)  # half the peak: each group at half its own peak
    assert [g["lr"] for g in adamw.param_groups] == [1.5e-3, 1.5e-3]
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01)
    w = model.transformer.h[0].mlp.c_fc.weight  # a Muon step from rest: an orthogonalised
    before, w.grad = w.detach().clone(), torch.randn_like(w)  # update, singular values near 1
    muon.step()
    s = torch.linalg.svdvals((before - w.detach()) / 0.01)
    assert 0.5 < s.min() and s.max() < 1.3
    assert sft.optimizers(model, sft.Config())[0].param_groups[0]["weight_decay"] == 0.1
    assert len(sft.optimizers(model, sft.Config())) == 2  # the default: Muon and AdamW
    assert len(sft.optimizers(model, sft.Config(optimizer="adamw"))) == 1  # AdamW alone


def test_sft_end_to_end(tmp_path):
    proc = run_script("sft.py", "--out", tmp_path, *TINY_SFT, "--steps", 6, "--eval-every", 3,
                      "--bucket")
    out = tmp_path / "sft"
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss.png", "samples.txt",
                 "tokenizer.json", "README.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["val_loss"] < rows[0]["loss"]  # it learned something in 6 steps
    point = json.loads(open(tmp_path / "results.jsonl").read())
    assert point["algo"] == "sft" and point["kl"] == 0.0 and -1 <= point["gold"] <= 1
    assert "bits/byte" in proc.stdout and "bits/byte" in (out / "README.md").read_text()
    reloaded = c.load_model(str(out))
    assert reloaded.config.bpe_ranks == 1024 and reloaded.config.pad_token_id == 1025
    assert not os.path.exists(out / ".tmp")


def test_init_from_a_hugging_face_checkpoint(tmp_path):
    """--init: the real from_pretrained path, on a checkpoint directory saved here (no network)."""
    torch.manual_seed(0)
    init = c.build_model(512, 1, 2, 32, 128)
    init.save_pretrained(tmp_path / "init")
    run_script("sft.py", "--out", tmp_path, "--init", tmp_path / "init", "--steps", 2,
               "--eval-every", 2, "--batch-size", 4, "--n-eval-prompts", 4, "--max-new-tokens", 4)
    trained = c.load_model(str(tmp_path / "sft"))
    assert trained.config.n_layer == 1 and trained.config.n_embd == 32
    assert not torch.equal(trained.lm_head.weight, init.lm_head.weight)


def test_bad_input_gets_one_line(tmp_path):
    assert "--n-ranks" in run_script("sft.py", "--help").stdout
    proc = run_script("sft.py", "--stepz", 3, check=False)
    assert proc.returncode == 2 and "--stepz" in proc.stderr
    proc = run_script("sft.py", "--steps", "many", check=False)
    assert proc.returncode == 2 and "--steps" in proc.stderr
    proc = run_script("sft.py", "--out", tmp_path, "--init", tmp_path / "missing", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "no checkpoint" in proc.stderr


def test_non_finite_loss_stops_with_one_line(tmp_path):
    proc = run_script("sft.py", "--out", tmp_path, *TINY_SFT, "--steps", 20, "--lr", 1e30,
                      "--warmup", 1, "--optimizer", "adamw", check=False)
    assert proc.returncode == 1 and "non-finite loss" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--muon-lr" not in proc.stderr  # AdamW alone: --lr is the flag to lower
    proc = run_script("sft.py", "--out", tmp_path, *TINY_SFT, "--steps", 4, "--optimizer", "muon",
                      "--muon-lr", 1e30, check=False)  # Muon diverged: it names its own flag
    assert proc.returncode == 1 and "try a lower --lr or --muon-lr" in proc.stderr


def test_ctrl_c_leaves_no_half_written_files(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sft.py"), "--out", str(tmp_path),
                             *TINY_SFT, "--steps", "100000", "--eval-every", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background job inherits SIGINT as ignored: give it back the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "sft" / "config.json").exists() and time.time() < deadline:
        time.sleep(0.2)  # wait for a first checkpoint, then interrupt mid-training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().startswith("error: interrupted")
    assert len(err.strip().splitlines()) == 1
    assert c.load_model(str(tmp_path / "sft")).config.n_layer == 2  # the last checkpoint loads



def test_a_diverged_run_keeps_the_previous_checkpoint(tmp_path):
    """A held-out loss that is not finite stops the run before it saves over good weights."""
    run_script("sft.py", "--out", tmp_path, *TINY_SFT, "--steps", 2, "--eval-every", 2)
    good = c.load_model(str(tmp_path / "sft")).lm_head.weight.clone()
    proc = run_script("sft.py", "--out", tmp_path, *TINY_SFT, "--steps", 5, "--eval-every", 1,
                      "--lr", 1e30, "--warmup", 1, check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "not finite" in proc.stderr or "non-finite" in proc.stderr
    assert "the last good checkpoint" not in proc.stderr  # this run saved nothing
    torch.testing.assert_close(c.load_model(str(tmp_path / "sft")).lm_head.weight, good)
