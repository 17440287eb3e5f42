"""The shared-prefix forward of TargetOnlyLoss gives the same loss and gradients as running every row whole."""

import pytest
import torch

from tuneforge.data.encode import IGNORE
from tuneforge.training.batching import shared_prefix_length
from tuneforge.training.losses import TargetOnlyLoss


def _batch(prefix_len=12, suffix_lens=(5, 3, 7), vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(5, vocab, (prefix_len,), generator=g)
    width = prefix_len + max(suffix_lens)
    ids = torch.zeros((len(suffix_lens), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for row, n in enumerate(suffix_lens):
        seq = torch.cat([prefix, torch.randint(5, vocab, (n,), generator=g)])
        ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        labels[row, len(seq) - 2:len(seq)] = seq[-2:]  # the last two tokens are the target
    return ids, mask, labels


def test_shared_prefix_length_stops_at_first_difference_and_before_targets():
    ids, mask, labels = _batch(prefix_len=12)
    # rows may agree by chance on the first suffix token, never on all of it
    assert 12 <= shared_prefix_length(ids, mask, labels) <= 12 + 1
    labels[0, 6] = ids[0, 6]  # a target inside the prefix: the prefix must end before the token predicting it
    assert shared_prefix_length(ids, mask, labels) == 5
    assert shared_prefix_length(ids[2:], mask[2:], torch.full_like(labels[2:], IGNORE)) == ids.shape[1] - 1  # unpadded row


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_loss_and_gradients_equal_the_plain_forward(tiny_llama_dir, lora):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    ids, mask, labels = _batch(vocab=model.config.vocab_size if not lora else model.base_model.model.config.vocab_size)
    results = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        loss, n = TargetOnlyLoss(model, share_prefix=share)(ids, mask, labels)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        results.append((loss.item(), int(n), grads))
    (plain_loss, plain_n, plain_grads), (shared_loss, shared_n, shared_grads) = results
    assert plain_n == shared_n == 6
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for k in plain_grads:
        torch.testing.assert_close(shared_grads[k], plain_grads[k], rtol=1e-4, atol=1e-6)


def test_generation_with_a_shared_prefix_gives_the_same_greedy_answers(embedded_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.generation import common_prefix_length, encode_prompt, generate

    torch.manual_seed(0)  # untied head: a tied random model only echoes its last input token (whitespace here)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=False)).eval()
    system = {"role": "system", "content": "You label the sentiment of movie reviews as positive or negative."}
    texts = ["a gorgeous, witty film", "dull", "the plot never comes together and the actors look bored",
             "Phim rất hay, diễn viên tuyệt vời!", "ok"]
    convs = [[system, {"role": "user", "content": f"Review: {t}\nSentiment:"}] for t in texts]
    assert common_prefix_length([encode_prompt(embedded_tokenizer, c) for c in convs]) >= 16
    plain = generate(model, embedded_tokenizer, convs, max_new_tokens=6, batch_size=2, share_prefix=False)
    shared = generate(model, embedded_tokenizer, convs, max_new_tokens=6, batch_size=2, share_prefix=True)
    assert shared == plain
    assert any(plain)


@pytest.mark.parametrize("tokens", ["targets", "text", "all"])
def test_distillation_loss_with_a_shared_prefix_equals_the_plain_one(tiny_llama_dir, tokens):
    import copy
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from tuneforge.compress.blocks import keep_blocks
    from tuneforge.compress.distill import DistillLoss

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    student = keep_blocks(copy.deepcopy(teacher), [1])
    kd = SimpleNamespace(loss="forward_kl", temperature=2.0, beta=0.5, ratio=0.5, chunk_tokens=4, tokens=tokens)
    ids, mask, labels = _batch(vocab=teacher.config.vocab_size)
    results = []
    for share in (False, True):
        student.zero_grad(set_to_none=True)
        loss, n = DistillLoss(student, teacher, kd, share_prefix=share)(ids, mask, labels)
        loss.backward()
        results.append((loss.item(), int(n), {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}))
    assert results[0][1] == results[1][1] == 6
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for k, g in results[0][2].items():
        torch.testing.assert_close(results[1][2][k], g, rtol=1e-4, atol=1e-6)


def test_text_kd_leaves_out_the_shared_prefix(tiny_llama_dir):
    import copy
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from tuneforge.compress.blocks import keep_blocks
    from tuneforge.compress.distill import DistillLoss
    from tuneforge.compress.kd import distill_loss

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    student = keep_blocks(copy.deepcopy(teacher), [1])
    ids, mask, labels = _batch(prefix_len=12, vocab=teacher.config.vocab_size)
    kd = {t: SimpleNamespace(loss="forward_kl", temperature=1.0, beta=0.5, ratio=1.0, chunk_tokens=8, tokens=t)
          for t in ("text", "all")}
    with torch.no_grad():
        loss = {t: DistillLoss(student, teacher, k, share_prefix=False)(ids, mask, labels)[0].item() for t, k in kd.items()}
        s_h, t_h = student.model(ids, attention_mask=mask)[0], teacher.model(ids, attention_mask=mask)[0]
        text_only = mask.clone()
        text_only[:, :13] = 0  # tokens predicted from the 12 prefix tokens all three rows start with
        by_hand, info = distill_loss(s_h, t_h, labels, student.lm_head, teacher.lm_head, ratio=1.0, kd_on=text_only)
    assert info["kd_tokens"] == int(mask.sum()) - 3 * 13
    assert loss["text"] == pytest.approx(by_hand.item() * info["targets"], rel=1e-5)
    assert loss["text"] != pytest.approx(loss["all"], rel=1e-3)
