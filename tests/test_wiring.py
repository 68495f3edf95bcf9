"""Wiring: what each script's main() hands to its tested formulas, flag by flag.

Two kinds of test guard this repo. Formula tests (tests/test_<script>.py) check a loss, an
advantage, a KL estimator or a pairing against values worked out by hand. Wiring tests (this
file) run a script's main() in this process for a few steps on the tiny pipeline, with spies on
those formulas (conftest.spy records each call's arguments and result), and check what main gave
them: that each flag reaches the formula it changes, that the KL sits where --kl-in puts it,
that the critic regresses onto A + V, that reference log-probs are π_ref's and not π_old's,
that a logged column holds what its name says. Checks are made at step 2, after an update with
a large learning rate, where π_θ ≠ π_ref and the KL they guard is not zero.
Where to add the next test: a new formula gets a hand-worked test in its script's test file; a
new flag or branch of main gets a check here.
"""
import pytest
import torch
from transformers import GPT2ForSequenceClassification

import common as c
import dpo, grpo, ppo, reward_model, rloo, sft
from conftest import TINY_SFT, linked_out, run_main, spy

CPU = torch.device("cpu")
TINY = ["--steps", 2, "--eval-every", 2, "--n-eval-prompts", 4, "--max-new-tokens", 8,
        "--lr", 1e-3]


def cat(calls, key):
    return torch.cat([call[key].detach() for call in calls])


def config(script, args):
    return c.parse_config(script.Config, script.__doc__, getattr(script, "CHOICES", None),
                          [str(a) for a in args])


@torch.no_grad()
def ref_logprobs(pipeline, tokens, n_prompt, size, temperature=1.0):
    """log π_ref of each response token, recomputed from the SFT checkpoint on disk."""
    ref = c.load_model(str(pipeline / "sft")).eval()
    with c.autocast(CPU):
        return c.rollout_logprobs(ref, tokens, n_prompt, size, temperature)


@torch.no_grad()
def expected_score(kind, pipeline, tokens):
    """What the policy should be maximising: VADER of the decoded texts, or r_φ."""
    enc = c.tokenizer(c.load_model(str(pipeline / "sft")).config.bpe_ranks)
    if kind == "gold":
        return c.gold_reward([c.decode(enc, t) for t in tokens.tolist()])
    rm = c.load_model(str(pipeline / "reward_model"), GPT2ForSequenceClassification).eval()
    with c.autocast(CPU):
        return c.reward(rm, tokens)


def assert_grouped_by_prompt(tokens, n_prompt, k):
    """Rows i·k … i·k + k − 1 answer one prompt (the baselines are taken within them)."""
    prompts = tokens[:, :n_prompt].view(-1, k, n_prompt)
    assert (prompts == prompts[:, :1]).all()


# ---------------------------------------------------------------- RL scripts

@pytest.mark.parametrize("flags", [[], ["--no-scale-std", "--kl-in", "reward", "--loss-norm",
                                        "constant", "--reward", "gold", "--temperature", 0.8]])
def test_grpo_wiring(pipeline, tmp_path, monkeypatch, flags):
    sampled = spy(monkeypatch, c, "sample")
    scored = spy(monkeypatch, c, "score_responses")
    penalised = spy(monkeypatch, c, "sequence_reward")
    advantaged = spy(monkeypatch, grpo, "grpo_advantages")
    losses = spy(monkeypatch, grpo, "grpo_loss")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--beta", 0.1, "--batch-size", 4,
            "--k", 4, "--minibatch-size", 8, "--ppo-epochs", 2, *flags]
    run_main(monkeypatch, grpo, *args)
    cfg = config(grpo, args)
    per_step = cfg.ppo_epochs * cfg.batch_size * cfg.k // cfg.minibatch_size
    assert len(losses) == cfg.steps * per_step
    first_pass = losses[per_step:per_step + per_step // cfg.ppo_epochs]  # step 2, in row order
    tokens, mask = scored[1]["tokens"], cat(first_pass, "mask")
    P = tokens.shape[1] - mask.shape[1]
    assert_grouped_by_prompt(tokens, P, cfg.k)
    assert {call["temperature"] for call in sampled} == {cfg.temperature}
    # 2. the score: r_φ, or VADER with --reward gold
    assert scored[1]["kind"] == cfg.reward
    torch.testing.assert_close(scored[1]["out"], expected_score(cfg.reward, pipeline, tokens))
    # log-probs: π_ref's recomputed from the SFT checkpoint, and they differ from π_old's
    old, ref = cat(first_pass, "old_logprobs"), cat(first_pass, "ref_logprobs")
    torch.testing.assert_close(ref * mask, ref_logprobs(pipeline, tokens, P, cfg.minibatch_size,
                                                        cfg.temperature) * mask)
    kl = c.sequence_kl(old, ref, mask)
    assert kl.abs().max() > 1e-3
    # 3. the KL: in the reward with --kl-in reward, in the loss (k3) otherwise, never both
    torch.testing.assert_close(penalised[1]["kl"], kl)
    assert penalised[1]["score"] is scored[1]["out"]
    assert penalised[1]["beta"] == (cfg.beta if cfg.kl_in == "reward" else 0.0)
    assert {call["beta"] for call in losses} == {cfg.beta if cfg.kl_in == "loss" else 0.0}
    # 4. advantages from those rewards, divided by the group's std unless --no-scale-std
    assert advantaged[1]["rewards"] is penalised[1]["out"] and advantaged[1]["k"] == cfg.k
    R = penalised[1]["out"].view(-1, cfg.k)
    adv = R - R.mean(1, keepdim=True)
    if cfg.scale_std:
        adv = adv / (R.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(cat(first_pass, "advantages"), adv.flatten())
    # 5. the loss gets the normalisation, clip and length of the flags
    for call in losses:
        assert (call["loss_norm"], call["clip"], call["max_new_tokens"]) == (
            cfg.loss_norm, cfg.clip, cfg.max_new_tokens)
    # the first minibatch of a rollout is on-policy (ratio 1), the second pass is not
    torch.testing.assert_close(first_pass[0]["logprobs"].detach(), first_pass[0]["old_logprobs"])
    second = losses[per_step + per_step // cfg.ppo_epochs]
    assert not torch.equal(second["logprobs"].detach(), second["old_logprobs"])


@pytest.mark.parametrize("baseline", ["loo", "mean", "none"])
def test_rloo_wiring(pipeline, tmp_path, monkeypatch, baseline):
    sampled = spy(monkeypatch, c, "sample")
    scored = spy(monkeypatch, c, "score_responses")
    penalised = spy(monkeypatch, c, "sequence_reward")
    seq = spy(monkeypatch, c, "response_logprobs")
    losses = spy(monkeypatch, rloo, "rloo_loss")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--beta", 0.1, "--batch-size", 4,
            "--k", 3, "--minibatch-size", 6, "--ppo-epochs", 2, "--clip", 0.3,
            "--reward", "gold", "--temperature", 0.8, "--baseline", baseline]
    run_main(monkeypatch, rloo, *args)
    cfg = config(rloo, args)
    n_mb = cfg.batch_size * cfg.k // cfg.minibatch_size
    assert len(losses) == cfg.steps * cfg.ppo_epochs * n_mb
    assert len(seq) == cfg.steps * (1 + cfg.ppo_epochs * n_mb)
    rollout = seq[1 + cfg.ppo_epochs * n_mb]  # step 2: log π_old(y|x) of the whole rollout
    old, mask = rollout["logprobs"], rollout["mask"]
    tokens = scored[1]["tokens"]
    P = tokens.shape[1] - mask.shape[1]
    assert_grouped_by_prompt(tokens, P, cfg.k)
    # 2. --reward gold: VADER itself
    assert scored[1]["kind"] == "gold"
    torch.testing.assert_close(scored[1]["out"], expected_score("gold", pipeline, tokens))
    # 3. R = score − β·KL, the KL of π_old against π_ref (recomputed from the SFT checkpoint)
    assert {call["temperature"] for call in sampled} == {cfg.temperature}
    ref = ref_logprobs(pipeline, tokens, P, cfg.minibatch_size, cfg.temperature)
    kl = c.sequence_kl(old, ref, mask)
    assert kl.abs().max() > 1e-3
    torch.testing.assert_close(penalised[1]["kl"], kl)
    assert penalised[1]["score"] is scored[1]["out"] and penalised[1]["beta"] == cfg.beta
    # 4. advantages of those rewards: leave-one-out, or --baseline mean (the batch's mean
    # reward) or none (REINFORCE); 5. the loss against log π_old(y|x)
    R = penalised[1]["out"].view(-1, cfg.k)
    adv = R - {"loo": (R.sum(1, keepdim=True) - R) / (cfg.k - 1), "mean": R.mean(),
               "none": 0.0}[cfg.baseline]
    first_pass = losses[cfg.ppo_epochs * n_mb:cfg.ppo_epochs * n_mb + n_mb]
    torch.testing.assert_close(cat(first_pass, "advantages"), adv.flatten())
    torch.testing.assert_close(cat(first_pass, "old_seq_logprobs"), rollout["out"])
    assert {call["clip"] for call in losses} == {cfg.clip}
    # the update reads log-probs at the sampling temperature: ratio 1 on the first minibatch
    torch.testing.assert_close(first_pass[0]["seq_logprobs"].detach(),
                               first_pass[0]["old_seq_logprobs"])


@pytest.mark.parametrize("flags", [
    [],
    ["--reward", "gold", "--ptx-coef", 0.5, "--ent-coef", 0.01, "--target-kl", 1.0,
     "--horizon", 100, "--clip", 0.3, "--vf-clip", 0.15, "--vf-coef", 0.2, "--gamma", 0.9,
     "--lam", 0.8, "--temperature", 0.8]])
def test_ppo_wiring(pipeline, tmp_path, monkeypatch, flags):
    sampled = spy(monkeypatch, c, "sample")
    scored = spy(monkeypatch, c, "score_responses")
    stepped = spy(monkeypatch, c, "optimizer_step")
    penalised = spy(monkeypatch, ppo, "token_rewards")
    gaes = spy(monkeypatch, ppo, "gae")
    pg = spy(monkeypatch, ppo, "ppo_policy_loss")
    vf = spy(monkeypatch, ppo, "value_loss")
    totals = spy(monkeypatch, ppo, "ppo_total_loss")
    ptx = spy(monkeypatch, ppo, "ptx_loss")
    betas = spy(monkeypatch, ppo, "adaptive_beta")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--steps", 3, "--eval-every", 3,
            "--batch-size", 8, "--minibatch-size", 4, "--ppo-epochs", 2, *flags]
    run_main(monkeypatch, ppo, *args)
    cfg = config(ppo, args)
    n_mb = cfg.batch_size // cfg.minibatch_size
    assert len(pg) == len(vf) == len(totals) == len(stepped) == cfg.steps * cfg.ppo_epochs * n_mb
    assert {call["temperature"] for call in sampled} == {cfg.temperature}
    first_pass = slice(cfg.ppo_epochs * n_mb, cfg.ppo_epochs * n_mb + n_mb)  # step 2, in order
    mask, old = cat(pg[first_pass], "mask"), cat(pg[first_pass], "old_logprobs")
    tokens = scored[1]["tokens"]
    P = tokens.shape[1] - mask.shape[1]
    # the update reads log-probs at the sampling temperature: ratio 1 on the first minibatch
    torch.testing.assert_close(pg[first_pass][0]["logprobs"].detach(),
                               pg[first_pass][0]["old_logprobs"])
    # 2. the score: r_φ, or VADER with --reward gold (PPO-GT)
    assert scored[1]["kind"] == cfg.reward
    torch.testing.assert_close(scored[1]["out"], expected_score(cfg.reward, pipeline, tokens))
    # 3. per-token penalty of π_old against π_ref, with this rollout's β
    pen = penalised[1]
    torch.testing.assert_close(pen["logprobs"] * mask, old * mask)
    ref = ref_logprobs(pipeline, tokens, P, cfg.minibatch_size, cfg.temperature)
    torch.testing.assert_close(pen["ref_logprobs"] * mask, ref * mask)
    assert ((old - ref) * mask).abs().max() > 1e-3 and pen["score"] is scored[1]["out"]
    if cfg.target_kl:  # the adaptive controller sets β for the next rollout from this one's KL
        assert len(betas) == cfg.steps and betas[0]["beta"] == cfg.beta
        assert (betas[1]["target"], betas[1]["n"], betas[1]["horizon"]) == (
            cfg.target_kl, cfg.batch_size, cfg.horizon)
        kl = c.sequence_kl(old, ref, mask).mean().item()
        assert betas[1]["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert pen["beta"] == betas[0]["out"] != cfg.beta
        assert penalised[2]["beta"] == betas[1]["out"] and betas[1]["beta"] == pen["beta"]
    else:
        assert not betas and {call["beta"] for call in penalised} == {cfg.beta}
    # 4. GAE on those rewards and the rollout's values, with the flags' γ and λ
    g = gaes[1]
    assert g["rewards"] is pen["out"] and (g["gamma"], g["lam"]) == (cfg.gamma, cfg.lam)
    torch.testing.assert_close(cat(vf[first_pass], "old_values"), g["values"])
    advantages, returns = g["out"]
    # 5. the policy loss gets the whitened advantages; the critic regresses onto A + V
    torch.testing.assert_close(cat(pg[first_pass], "advantages"), ppo.whiten(advantages, mask))
    torch.testing.assert_close(cat(vf[first_pass], "returns"), returns)
    assert {call["clip"] for call in pg} == {cfg.clip}
    assert {call["clip"] for call in vf} == {cfg.vf_clip}
    # the total: pg + c_v·vf − c_e·H, plus γ_ptx · the LM loss on IMDb text (PPO-ptx)
    assert len(ptx) == (len(totals) if cfg.ptx_coef else 0)
    for n, (total, step) in enumerate(zip(totals, stepped)):
        assert total["pg_loss"] is pg[n]["out"] and total["vf_loss"] is vf[n]["out"]
        assert (total["vf_coef"], total["ent_coef"]) == (cfg.vf_coef, cfg.ent_coef)
        expected = total["out"] + (cfg.ptx_coef * ptx[n]["out"] if cfg.ptx_coef else 0.0)
        torch.testing.assert_close(step["loss"], expected)
        if cfg.ptx_coef:
            assert ptx[n]["n"] == cfg.minibatch_size and ptx[n]["out"].requires_grad


# ---------------------------------------------------------------- DPO

@torch.no_grad()
def ref_pair_logps(pipeline, pairs):
    ref = c.load_model(str(pipeline / "sft")).eval()
    return dpo.all_logps(ref, pairs, CPU)


def test_dpo_offline_wiring(pipeline, tmp_path, monkeypatch):
    fed = spy(monkeypatch, dpo, "batch_logps")
    losses = spy(monkeypatch, dpo, "preference_loss")
    read = spy(monkeypatch, c, "read_preferences")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--steps", 3, "--eval-every", 3,
            "--loss", "ipo", "--beta", 0.2, "--n-pairs", 64, "--batch-size", 32, "--lr", 2e-2]
    run_main(monkeypatch, dpo, *args)
    cfg = config(dpo, args)
    # the pairs are checked against the policy's positions (a longer pair: one line, not a crash)
    assert [call["n_positions"] for call in read] == [
        c.load_model(str(pipeline / "sft")).config.n_positions]
    assert {(call["kind"], call["beta"]) for call in losses} == {(cfg.loss, cfg.beta)}
    train = [call for call in losses if call["logps_chosen"].requires_grad]
    batches = [call["pairs"] for call in fed if call["out"][0].requires_grad]
    assert len(train) == len(batches) == cfg.steps
    # --n-pairs 64 with 32 a step: step 3 goes round to step 1's pairs
    assert batches[2] == batches[0] != batches[1]
    # the reference log-probs are π_ref's (the SFT checkpoint, computed once over the 64
    # pairs), not the moving policy's
    ref_chosen, ref_rejected = ref_pair_logps(pipeline, batches[0] + batches[1])
    for call, rows in zip(train, (slice(0, 32), slice(32, 64), slice(0, 32))):
        torch.testing.assert_close(call["ref_chosen"], ref_chosen[rows])
        torch.testing.assert_close(call["ref_rejected"], ref_rejected[rows])
    assert (train[2]["logps_chosen"] - train[2]["ref_chosen"]).abs().max() > 1e-3


@pytest.mark.parametrize("judge", ["model", "labeler"])
def test_dpo_online_wiring(pipeline, tmp_path, monkeypatch, judge):
    sampled = spy(monkeypatch, c, "sample")
    labelled = spy(monkeypatch, c, "labeler_scores")
    paired = spy(monkeypatch, dpo, "online_pairs")
    losses = spy(monkeypatch, dpo, "preference_loss")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--online", "--judge", judge,
            "--tau", 0.05, "--loss", "hinge", "--batch-size", 8, "--lr", 2e-2]
    run_main(monkeypatch, dpo, *args)
    cfg = config(dpo, args)
    assert len(sampled) == len(paired) == cfg.steps
    assert {(call["kind"], call["beta"]) for call in losses} == {(cfg.loss, cfg.beta)}
    train = [call for call in losses if call["logps_chosen"].requires_grad]
    for i, (sample, pairs, call) in enumerate(zip(sampled, paired, train)):
        tokens = sample["out"][0]  # two fresh responses to each of batch_size training prompts
        assert len(tokens) == 2 * cfg.batch_size
        if judge == "labeler":  # VADER/τ + noise: the labeler that labelled the offline file
            torch.testing.assert_close(labelled[i]["gold"], expected_score("gold", pipeline,
                                                                           tokens))
            judged = labelled[i]["out"]
        else:
            judged = expected_score("model", pipeline, tokens)
        torch.testing.assert_close(pairs["score"].flatten(), judged)
        ref_chosen, ref_rejected = ref_pair_logps(pipeline, pairs["out"])
        torch.testing.assert_close(call["ref_chosen"], ref_chosen)
        torch.testing.assert_close(call["ref_rejected"], ref_rejected)
    assert len(labelled) == (cfg.steps if judge == "labeler" else 0)
    assert {call["tau"] for call in labelled} <= {cfg.tau}


def test_dpo_rounds_wiring(pipeline, tmp_path, monkeypatch):
    rounds = spy(monkeypatch, dpo, "judged_pairs")
    fed = spy(monkeypatch, dpo, "batch_logps")
    losses = spy(monkeypatch, dpo, "preference_loss")
    args = ["--out", linked_out(tmp_path, pipeline), *TINY, "--steps", 4, "--eval-every", 4,
            "--rounds", 2, "--judge", "labeler", "--batch-size", 8, "--lr", 2e-2]
    run_main(monkeypatch, dpo, *args)
    cfg = config(dpo, args)
    # a round at steps 1 and 3, each labelling the pairs of its two steps, judged as asked
    assert [(call["n"], call["cfg"].judge) for call in rounds] == [(16, "labeler")] * 2
    train = [call for call in losses if call["logps_chosen"].requires_grad]
    batches = [call["pairs"] for call in fed if call["out"][0].requires_grad]
    assert len(train) == len(batches) == cfg.steps
    for n, round_ in enumerate(rounds):
        pairs = round_["out"]
        assert batches[2 * n] == pairs[:8] and batches[2 * n + 1] == pairs[8:]
        ref_chosen, ref_rejected = ref_pair_logps(pipeline, pairs)  # π_ref's, once a round
        for call, rows in zip(train[2 * n:2 * n + 2], (slice(0, 8), slice(8, 16))):
            torch.testing.assert_close(call["ref_chosen"], ref_chosen[rows])
            torch.testing.assert_close(call["ref_rejected"], ref_rejected[rows])
    assert rounds[0]["out"] != rounds[1]["out"]
    # each round samples from the policy it starts from, not from π_ref: the second round's
    # sampler holds the weights trained in the first (it is the trained policy, not the SFT's)
    policy = rounds[1]["policy"]
    assert policy is rounds[0]["policy"]
    sft_weights = c.load_model(str(pipeline / "sft")).state_dict()
    assert any(not torch.equal(w.detach().cpu(), sft_weights[k])
               for k, w in policy.state_dict().items() if k in sft_weights)


# ---------------------------------------------------------------- SFT and the reward model

def test_sft_bucket_wiring(tmp_path, monkeypatch):
    made = []
    length_batches = sft.length_batches
    monkeypatch.setattr(sft, "length_batches", lambda *a, **k: made.append(
        list(length_batches(*a, **k))) or list(made[-1]))
    data = spy(monkeypatch, sft, "batch")
    losses = spy(monkeypatch, sft, "sft_loss")
    rates = spy(monkeypatch, c, "lr_at")
    optimisers = spy(monkeypatch, torch.optim, "AdamW")
    run_main(monkeypatch, sft, "--out", tmp_path, *TINY_SFT, "--steps", 3, "--eval-every", 3,
             "--bucket", "--warmup", 2, "--weight-decay", 0.2, "--lr", 1e-3)
    # the schedule and the optimiser get the flags: decay on the matrices only
    assert [(r["step"], r["lr"], r["warmup"], r["steps"]) for r in rates] == [
        (s, 1e-3, 2, 3) for s in range(3)]
    (matrices, vectors), = [call["params"] for call in optimisers]
    assert (matrices["weight_decay"], vectors["weight_decay"]) == (0.2, 0.0)
    assert {p.dim() for p in matrices["params"]} == {2}
    assert {p.dim() for p in vectors["params"]} == {1}
    train = [call for call in losses if call["out"].requires_grad]
    x, y, _ = data[0]["out"]  # the training split
    lengths = (x != c.tokenizer(1024).eot_token + 1).sum(1)  # real tokens (TINY_SFT's ranks)
    assert len(made) == 1 and len(train) == 3
    for step, call in enumerate(train):
        idx = made[0][-1 - step]  # batches are taken from the end of the epoch's list
        n = int(lengths[idx].max())
        torch.testing.assert_close(call["x"], x[idx, :n])
        torch.testing.assert_close(call["y"], y[idx, :n])


def test_sft_preferred_wiring(pipeline, tmp_path, monkeypatch):
    out = linked_out(tmp_path, pipeline)
    chosen = spy(monkeypatch, sft, "preferred")
    read = spy(monkeypatch, c, "read_preferences")
    openings = spy(monkeypatch, sft, "openings")
    data = spy(monkeypatch, sft, "batch")
    evaluated = spy(monkeypatch, c, "evaluate")
    run_main(monkeypatch, sft, "--out", out, "--steps", 2, "--eval-every", 2, "--lr", 1e-3,
             "--batch-size", 8, "--n-eval-prompts", 4, "--max-new-tokens", 8, "--preferred")
    assert not openings and [call["split"] for call in chosen] == ["train", "valid"]
    assert {call["path"] for call in chosen} == {str(out / "preferences.jsonl")}
    n_positions = c.load_model(str(pipeline / "sft")).config.n_positions  # lengths checked
    assert [call["n_positions"] for call in read] == [n_positions] * 2
    assert data[0]["examples"] is chosen[0]["out"] and data[1]["examples"] is chosen[1]["out"]
    # it went on from π_SFT (not from scratch), which stays the reference of its evaluation
    sft_model = c.load_model(str(pipeline / "sft"))
    tuned = c.load_model(str(out / "preferred_ft"))
    ev = evaluated[0]
    torch.testing.assert_close(ev["ref"].lm_head.weight, sft_model.lm_head.weight)
    delta = (tuned.lm_head.weight - sft_model.lm_head.weight).abs()
    assert 0 < delta.max() < 0.1 and ev["out"]["kl"] != 0


def test_reward_model_wiring(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sft").symlink_to(pipeline / "sft")
    ranked = spy(monkeypatch, reward_model, "rank")
    rates = spy(monkeypatch, c, "lr_at")
    losses = spy(monkeypatch, reward_model, "bt_loss")
    fitted = spy(monkeypatch, reward_model, "fit")
    args = ["--out", out, "--k", 3, "--tau", 0.3, "--n-prompts", 32, "--n-val-prompts", 8,
            "--batch-size", 8, "--epochs", 2, "--schedule", "cosine", "--max-new-tokens", 8,
            "--n-eval-prompts", 4, "--eval-every", 4, "--trunk", "1x48"]
    run_main(monkeypatch, reward_model, *args)
    cfg = config(reward_model, args)
    # the labeler ranks k responses of each prompt at the flag's τ
    assert len(ranked) == cfg.n_prompts + cfg.n_val_prompts
    assert {(len(call["gold"]), call["tau"]) for call in ranked} == {(cfg.k, cfg.tau)}
    # epochs × prompts/batch steps, each with a learning rate of the chosen schedule, and each a
    # Bradley–Terry loss over the k(k−1)/2 pairs of every prompt of its batch
    steps = cfg.epochs * cfg.n_prompts // cfg.batch_size
    assert [(r["step"], r["steps"], r["cosine"]) for r in rates] == [
        (s, steps, True) for s in range(steps)]
    train = [call for call in losses if call["out"].requires_grad]
    assert len(train) == steps
    assert {len(call["chosen_rewards"]) for call in train} == {
        cfg.batch_size * cfg.k * (cfg.k - 1) // 2}
    # --trunk LxD: a from-scratch trunk of that shape on the SFT's vocabulary
    rm = fitted[0]["rm"].config
    assert (rm.n_layer, rm.n_embd, rm.vocab_size) == (1, 48, c.load_model(
        str(pipeline / "sft")).config.vocab_size)


# ---------------------------------------------------------------- the shared evaluation

def test_evaluation_columns_hold_what_they_say(monkeypatch):
    """gold is VADER's mean and proxy r_φ's mean over the same evaluation samples."""
    torch.manual_seed(0)
    policy = c.build_model(512, n_layer=1, n_head=2, n_embd=32, n_positions=64).eval()
    rm = GPT2ForSequenceClassification(policy.config).eval()
    rm.score = torch.nn.Linear(32, 1, bias=False)
    enc = c.tokenizer(512)
    proxies = spy(monkeypatch, c, "reward")
    golds = spy(monkeypatch, c, "gold_reward")
    ev = c.evaluate(policy, policy, enc, c.prompts("eval", enc, 12), 6, rm, batch_size=8)
    assert len(proxies) == len(golds) == 2  # batches of 8 and 4
    proxy, gold = cat(proxies, "out").float(), cat(golds, "out").float()
    assert ev["proxy"] == pytest.approx(proxy.mean().item())
    assert ev["proxy_se"] == pytest.approx(proxy.std().item() / 12 ** 0.5)
    assert ev["gold"] == pytest.approx(gold.mean().item()) and ev["proxy"] != ev["gold"]
    for p, g in zip(proxies, golds):  # the same samples, scored by both
        assert g["texts"] == [c.decode(enc, t) for t in p["tokens"].tolist()]


@pytest.mark.parametrize("script, n_models, n_trained", [(rloo, 3, 1), (ppo, 4, 2)])
def test_models_held_and_trained(pipeline, tmp_path, monkeypatch, script, n_models, n_trained):
    """Deck 000: RLOO is light, a policy, its frozen reference π_ref and the reward model, three
    models of which one is trained (no critic); PPO holds four and trains two (the critic)."""
    loaded = spy(monkeypatch, c, "load_model")
    opts = spy(monkeypatch, torch.optim, "AdamW")
    run_main(monkeypatch, script, "--out", linked_out(tmp_path, pipeline), *TINY,
             "--batch-size", 4, "--minibatch-size", 4)
    models = list({id(call["out"]): call["out"] for call in loaded}.values())
    assert len(models) == n_models
    trained = {id(p) for opt in opts for g in opt["out"].param_groups for p in g["params"]}
    owners = [m for m in models if {id(p) for p in m.parameters()} <= trained]
    assert len(owners) == n_trained
    assert sum(p.numel() for m in owners for p in m.parameters()) == \
        sum(p.numel() for opt in opts for g in opt["out"].param_groups for p in g["params"])
