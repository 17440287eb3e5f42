"""Encoder-decoder models (T5, BART, Marian) train and generate through tuneforge.data.seq2seq.

Tiny random models and a word-level tokenizer built offline from the test sentences: seconds, no download.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from tuneforge.data.seq2seq import (
    collate_seq2seq,
    encode_pair,
    generate_seq2seq,
    is_encoder_decoder,
    pair_from_conversation,
    seq2seq_loss,
    target_tokens,
)
from tuneforge.errors import UserError

PAIRS = [
    ("translate: hello world", "xin chào thế giới"),
    ("translate: good morning teacher", "chào buổi sáng thầy giáo"),
    ("translate: thank you very much", "cảm ơn rất nhiều"),
    ("translate: the lecturer is kind", "giảng viên rất nhiệt tình"),
]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the test sentences; appends </s> like T5's."""
    specials = ["<pad>", "</s>", "<unk>"]
    words = sorted({w for pair in PAIRS for text in pair for w in text.split()})
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(tok):
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id, dropout_rate=0.0)
    return T5ForConditionalGeneration(cfg)


def tiny_bart(tok):
    cfg = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None, dropout=0.0)
    return BartForConditionalGeneration(cfg)


def tiny_marian(tok):
    cfg = MarianConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=None, dropout=0.0)
    return MarianMTModel(cfg)


def train_steps(model, tok, steps: int, lr: float = 3e-3) -> list[float]:
    feats = [encode_pair(tok, s, t, max_source_len=32, max_target_len=16) for s, t in PAIRS]
    batch = collate_seq2seq(feats, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = seq2seq_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_encode_pair_cuts_the_source_never_the_target_budget():
    tok = word_tokenizer()
    src, tgt = PAIRS[1]
    feat = encode_pair(tok, src, tgt, max_source_len=3, max_target_len=16)
    assert feat["truncated"] and not feat["target_truncated"]
    assert len(feat["input_ids"]) == 3 and feat["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(feat["labels"], skip_special_tokens=True) == tgt  # Vietnamese target intact
    whole = encode_pair(tok, src, tgt, max_source_len=32, max_target_len=16)
    assert not whole["truncated"]
    assert tok.decode(whole["input_ids"], skip_special_tokens=True) == src


def test_collate_pads_source_with_pad_and_targets_with_ignore_index():
    tok = word_tokenizer()
    feats = [encode_pair(tok, s, t, max_source_len=32, max_target_len=16) for s, t in PAIRS[:2]]
    batch = collate_seq2seq(feats, tok.pad_token_id)
    short = min(range(2), key=lambda i: len(feats[i]["labels"]))
    assert batch["labels"][short, -1].item() == -100
    assert batch["attention_mask"].sum().item() == sum(len(f["input_ids"]) for f in feats)
    assert target_tokens(batch) == sum(len(f["labels"]) for f in feats)


def test_pair_from_conversation_takes_the_last_assistant_turn():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Dịch: hello"},
            {"role": "assistant", "content": "xin chào"}]
    assert pair_from_conversation(conv) == ("Be brief.\n\nDịch: hello", "xin chào")
    with pytest.raises(UserError):
        pair_from_conversation(conv[:-1])


@pytest.mark.parametrize("build", [tiny_t5, tiny_bart, tiny_marian], ids=["t5", "bart", "marian"])
def test_encoder_decoder_loss_decreases(build):
    torch.manual_seed(0)
    tok = word_tokenizer()
    model = build(tok)
    assert is_encoder_decoder(model)
    losses = train_steps(model, tok, steps=15)
    assert losses[-1] < 0.8 * losses[0], losses


def test_t5_memorises_pairs_and_generates_them_greedily():
    torch.manual_seed(0)
    tok = word_tokenizer()
    model = tiny_t5(tok)
    losses = train_steps(model, tok, steps=120, lr=1e-2)
    assert losses[-1] < 0.05, losses[-5:]
    out = generate_seq2seq(model, tok, [s for s, _ in PAIRS], max_new_tokens=8, batch_size=3)
    assert out == [t for _, t in PAIRS]


def test_saved_t5_loads_through_load_model(tmp_path):
    from tuneforge.models import load_model

    torch.manual_seed(0)
    tok = word_tokenizer()
    model = tiny_t5(tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), kind="seq2seq", dtype="float32", device="cpu")
    assert is_encoder_decoder(loaded)
    batch = collate_seq2seq([encode_pair(loaded_tok, *PAIRS[0], max_source_len=32, max_target_len=16)], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(seq2seq_loss(loaded, batch), seq2seq_loss(model.eval(), batch))
