"""Distillation losses against values computed by hand from probabilities, and the student builders."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.compress import kd
from tuneforge.errors import UserError

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.4, 0.4, 0.2]  # student



def logits(probs):
    return torch.tensor([math.log(p) for p in probs]) + 3.0  # any shift: softmax ignores it


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True))


def soft(probs, temperature):
    z = [p ** (1 / temperature) for p in probs]
    return [x / sum(z) for x in z]


def test_forward_and_reverse_kl_by_hand():
    fwd = kd.divergence(logits(Q), logits(P), kind="forward_kl")
    rev = kd.divergence(logits(Q), logits(P), kind="reverse_kl")
    assert float(fwd) == pytest.approx(0.7 * math.log(0.7 / 0.4) + 0.2 * math.log(0.5) + 0.1 * math.log(0.5))
    assert float(rev) == pytest.approx(kl(Q, P))
    assert float(fwd) != pytest.approx(float(rev))


def test_jsd_half_by_hand_and_bounded_by_log2():
    m = [(p + q) / 2 for p, q in zip(P, Q, strict=True)]
    value = float(kd.divergence(logits(Q), logits(P), kind="jsd", beta=0.5))
    assert value == pytest.approx(0.5 * kl(P, m) + 0.5 * kl(Q, m))
    assert 0 < value < math.log(2)


@pytest.mark.parametrize("beta", [0.2, 0.8])
def test_jsd_general_beta_by_hand(beta):
    m = [beta * p + (1 - beta) * q for p, q in zip(P, Q, strict=True)]
    value = float(kd.divergence(logits(Q), logits(P), kind="jsd", beta=beta))
    assert value == pytest.approx(beta * kl(P, m) + (1 - beta) * kl(Q, m))


def test_jsd_beta_limits():
    s, t = logits(Q), logits(P)
    assert float(kd.divergence(s, t, kind="jsd", beta=0.0)) == pytest.approx(kl(P, Q))
    assert float(kd.divergence(s, t, kind="jsd", beta=1.0)) == pytest.approx(kl(Q, P))
    eps = 1e-3  # JSD(β)/β → KL(P‖Q) as β → 0; JSD(β)/(1−β) → KL(Q‖P) as β → 1
    assert float(kd.divergence(s, t, kind="jsd", beta=eps)) / eps == pytest.approx(kl(P, Q), rel=1e-2)
    assert float(kd.divergence(s, t, kind="jsd", beta=1 - eps)) / eps == pytest.approx(kl(Q, P), rel=1e-2)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_temperature_softens_and_scales_by_t_squared(kind):
    T = 2.0
    p, q = soft(P, T), soft(Q, T)
    expected = (kl(p, q) if kind == "forward_kl" else kl(q, p)) * T**2
    assert float(kd.divergence(logits(Q), logits(P), kind=kind, temperature=T)) == pytest.approx(expected, rel=1e-5)


def test_identical_distributions_give_zero_and_bad_options_are_user_errors():
    x = torch.randn(5, 11)
    for kind in kd.KINDS:
        assert kd.divergence(x, x, kind=kind).abs().max() < 1e-6
    with pytest.raises(UserError, match="kd.loss"):
        kd.divergence(x, x, kind="mse")
    with pytest.raises(UserError, match="temperature"):
        kd.divergence(x, x, temperature=0)


# -- from hidden states, over target tokens, in chunks ---------------------------------------------------


def heads(vocab=13, dim=6, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, vocab, bias=False), torch.nn.Linear(dim, vocab, bias=False)


def hidden_and_labels(seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 7, 6, generator=g, requires_grad=True)
    t = torch.randn(2, 7, 6, generator=g)
    labels = torch.full((2, 7), -100)
    labels[0, 3:6] = torch.tensor([1, 4, 2])
    labels[1, 5:7] = torch.tensor([7, 0])
    return s, t, labels


def test_distill_loss_uses_target_tokens_only_and_mixes_ce_by_ratio():
    s_head, t_head = heads()
    s, t, labels = hidden_and_labels()
    loss, info = kd.distill_loss(s, t, labels, s_head, t_head, kind="forward_kl", ratio=0.3)
    # by hand: position i predicts label i+1, so targets sit at (0, 2..4) and (1, 4..5)
    pos = [(0, 2, 1), (0, 3, 4), (0, 4, 2), (1, 4, 7), (1, 5, 0)]
    s_log = torch.stack([s_head(s[b, i]) for b, i, _ in pos])
    t_log = torch.stack([t_head(t[b, i]) for b, i, _ in pos])
    tgt = torch.tensor([y for *_, y in pos])
    p, logq = F.softmax(t_log, -1), F.log_softmax(s_log, -1)
    fwd = (p * (p.log() - logq)).sum(-1).mean()
    ce = F.cross_entropy(s_log, tgt)
    assert info["targets"] == 5
    torch.testing.assert_close(loss, 0.3 * fwd + 0.7 * ce)
    # hidden states at non-target positions do not matter
    s2, t2 = s.detach().clone(), t.clone()
    s2[0, 0] += 100
    t2[1, 1] -= 100
    loss2, _ = kd.distill_loss(s2, t2, labels, s_head, t_head, kind="forward_kl", ratio=0.3)
    torch.testing.assert_close(loss2, loss.detach())


def test_kd_on_every_token_keeps_ce_on_the_targets():
    s_head, t_head = heads()
    s, t, labels = hidden_and_labels()
    on = torch.ones_like(labels, dtype=torch.bool)
    on[0, 6:] = False  # row 0's last token is padding
    loss, info = kd.distill_loss(s, t, labels, s_head, t_head, kind="reverse_kl", ratio=0.4, kd_on=on, chunk_tokens=3)
    # KD: every position that predicts a marked token, (0, 0..4) and (1, 0..5); CE: the 5 targets as before
    kd_pos = [(0, i) for i in range(5)] + [(1, i) for i in range(6)]
    s_log = torch.stack([s_head(s[b, i]) for b, i in kd_pos])
    t_log = torch.stack([t_head(t[b, i]) for b, i in kd_pos])
    q, logp = F.softmax(s_log, -1), F.log_softmax(t_log, -1)
    rev = (q * (q.log() - logp)).sum(-1).mean()
    ce_pos = [(0, 2, 1), (0, 3, 4), (0, 4, 2), (1, 4, 7), (1, 5, 0)]
    ce = F.cross_entropy(torch.stack([s_head(s[b, i]) for b, i, _ in ce_pos]), torch.tensor([y for *_, y in ce_pos]))
    assert info["targets"] == 5 and info["kd_tokens"] == len(kd_pos)
    torch.testing.assert_close(loss, 0.4 * rev + 0.6 * ce)


@pytest.mark.parametrize("kind", kd.KINDS)
def test_chunked_equals_unchunked_in_value_and_gradient(kind):
    s_head, t_head = heads()
    grads = []
    values = []
    for chunk in (1, 2, 1000):
        s, t, labels = hidden_and_labels()
        s_head.zero_grad()
        loss, _ = kd.distill_loss(s, t, labels, s_head, t_head, kind=kind, temperature=1.5, ratio=0.6,
                                  chunk_tokens=chunk)
        loss.backward()
        values.append(loss.detach())
        grads.append((s.grad.clone(), s_head.weight.grad.clone()))
    for v, (gs, gw) in zip(values[1:], grads[1:], strict=True):
        torch.testing.assert_close(v, values[0])
        torch.testing.assert_close(gs, grads[0][0])
        torch.testing.assert_close(gw, grads[0][1])
    assert t_head.weight.grad is None  # the teacher never gets gradients


def test_no_targets_gives_zero_loss_that_still_backpropagates():
    s_head, t_head = heads()
    s, t, labels = hidden_and_labels()
    loss, info = kd.distill_loss(s, t, torch.full_like(labels, -100), s_head, t_head)
    loss.backward()
    assert float(loss) == 0 and info["targets"] == 0


# -- students ---------------------------------------------------------------------------------------------


def tiny_llama(layers=6):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_choose_blocks():
    assert kd.choose_blocks(6, "every_other") == [0, 2, 4]
    assert kd.choose_blocks(30, "every_other") == list(range(0, 30, 2))
    assert kd.choose_blocks(5, "evenly:3") == [0, 2, 4]
    assert kd.choose_blocks(6, "first:2") == [0, 1]
    assert kd.choose_blocks(6, [5, 1]) == [1, 5]
    for bad in ("half", "evenly:0", "first:9", "importance:7", [6]):
        with pytest.raises(UserError, match="keep_blocks"):
            kd.choose_blocks(6, bad)


def test_choose_blocks_by_importance_keeps_the_blocks_that_change_most():
    importance = [0.9, 0.05, 0.3, 0.05, 0.01, 0.4]
    assert kd.needs_importance("importance:3") and not kd.needs_importance("every_other")
    assert kd.choose_blocks(6, "importance:3", importance) == [0, 2, 5]
    assert kd.choose_blocks(6, "importance:5", importance) == [0, 1, 2, 3, 5]  # tie at 0.05: the later block goes
    with pytest.raises(UserError, match="calibration"):
        kd.choose_blocks(6, "importance:3")


def test_student_from_teacher_keeps_blocks_and_weights():
    teacher = tiny_llama(6)
    student, kept = kd.student_from_teacher(teacher, "every_other")
    assert kept == [0, 2, 4]
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    for new, old in zip(student.model.layers, kept, strict=True):
        torch.testing.assert_close(new.mlp.up_proj.weight, teacher.model.layers[old].mlp.up_proj.weight)
        assert new.mlp.up_proj.weight is not teacher.model.layers[old].mlp.up_proj.weight  # a copy
    ids = torch.randint(0, 64, (1, 8))
    out = student.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)
