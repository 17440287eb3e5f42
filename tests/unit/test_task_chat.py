"""Chat pack: message normalisation, held-out loss/perplexity on assistant tokens with a tiny model."""

import math

import pytest
import torch

from tuneforge.tasks import get_task
from tuneforge.tasks.chat import chat_loss, conversation_losses


@pytest.fixture(scope="module")
def tok():
    from tuneforge.models import load_tokenizer

    try:
        return load_tokenizer(None)
    except Exception as e:
        pytest.skip(f"embedded tokenizer not available: {e}")


@pytest.fixture(scope="module")
def tiny(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


CONVS = [
    [{"role": "user", "content": "Xin chào"}, {"role": "assistant", "content": "Chào bạn, tôi giúp gì được?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}],
    [{"role": "user", "content": "Tell me a long story " * 20}, {"role": "assistant", "content": "Once upon a time."}],
]


def test_prepare_prompt_reference():
    task = get_task("chat", system="You are kind.")
    row = task.prepare([{"instruction": "Hi", "input": "", "output": "Hello", "_line": 1}], "a.json")[0]
    assert row["messages"][0] == {"role": "system", "content": "You are kind."}
    assert task.prompt(row)[-1] == {"role": "user", "content": "Hi"}
    assert task.reference(row) == "Hello" and task.conversation(row)[-1]["role"] == "assistant"
    assert task.eval_mode == "loss" and task.primary_metric == "perplexity"


def test_chat_loss_equals_the_models_own_masked_loss(tiny, tok):
    from tuneforge.data.encode import encode_conversation

    got = chat_loss(tiny, tok, CONVS, batch_size=2, max_len=512)
    nll = tokens = 0.0
    for conv in CONVS:  # one at a time, no padding: HF's loss is the mean over labelled (shifted) tokens
        e = encode_conversation(tok, conv, 512)
        ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            nll += float(tiny(input_ids=ids, labels=labels).loss) * n
        tokens += n
    assert got["assistant_tokens"] == tokens
    assert got["loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert got["n"] == 3 and got["truncated"] == 0


def test_padding_does_not_change_per_conversation_losses(tiny, tok):
    one = conversation_losses(tiny, tok, CONVS, batch_size=1)
    three = conversation_losses(tiny, tok, CONVS, batch_size=3)
    for a, b in zip(one, three, strict=True):
        assert a["tokens"] == b["tokens"] and a["nll"] == pytest.approx(b["nll"], rel=1e-4)


def test_long_conversations_are_cut_and_counted(tiny, tok):
    got = chat_loss(tiny, tok, CONVS, batch_size=3, max_len=64)
    assert got["truncated"] == 1
    task = get_task("chat", max_len=64)
    metrics, preds = task.loss_metrics(tiny, tok, [{"messages": c} for c in CONVS], batch_size=2)
    assert metrics["loss"] == pytest.approx(got["loss"]) and len(preds) == 3 and preds[2]["truncated"]
