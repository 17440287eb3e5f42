"""A tiny random chat model (Llama architecture, byte-level BPE tokenizer, ChatML template) built in memory.

Shared by the GGUF, quantization and export unit tests (`from test_gguf_tiny import tiny_chat_model`);
the tests below check the fixture itself is what those tests assume.
"""

from __future__ import annotations

import functools

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Thủ đô của Việt Nam là Hà Nội. Xin chào, bạn khỏe không?",
    "What is the sentiment of this text? Answer with one word: negative or positive.",
    "In 2024 there were 123 cats and 456 dogs; numbers, punctuation!?",
] * 4


@functools.cache
def tiny_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer_object(),
        bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_chat_model(seed: int = 0, *, tied: bool = True, extra_vocab: int = 8, layers: int = 2, hidden: int = 64):
    """(model, tokenizer): hidden 64 (2 quant blocks per row; 256 fits one K-quant block), 4 query heads over
    2 KV heads, fp32, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok) + extra_vocab,  # a few embedding rows without a token, as padded vocabularies have
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    # Larger weights than the default init so that greedy tokens depend on every layer.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.15)
    return model, tok


def test_tiny_tokenizer_round_trips_vietnamese_and_has_chat_specials():
    tok = tiny_tokenizer()
    text = "Thủ đô của Việt Nam là Hà Nội."
    assert tok.decode(tok(text)["input_ids"]) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"


def test_tiny_model_ties_embeddings_and_pads_vocab():
    model, tok = tiny_chat_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.vocab_size > len(tok)
