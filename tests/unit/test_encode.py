from tuneforge.data.encode import IGNORE, encode_conversation, encode_prompt


def test_loss_only_on_assistant_turns(embedded_tokenizer):
    tok = embedded_tokenizer
    msgs = [{"role": "user", "content": "Xin chào"}, {"role": "assistant", "content": "Chào bạn!"},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    enc = encode_conversation(tok, msgs, max_len=512)
    full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == full and not enc["truncated"]
    targets = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE])
    assert targets.replace("\n", "") == "Chào bạn!<|im_end|>4<|im_end|>"


def test_prompt_ends_with_generation_header(embedded_tokenizer):
    ids = encode_prompt(embedded_tokenizer, [{"role": "user", "content": "hi"}])
    assert embedded_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_truncation_cuts_the_source_never_the_target(embedded_tokenizer):
    tok = embedded_tokenizer
    long_source = " ".join(f"word{i}" for i in range(400))
    msgs = [{"role": "user", "content": long_source + " QUESTION_END"}, {"role": "assistant", "content": "the answer"}]
    enc = encode_conversation(tok, msgs, max_len=128)
    assert enc["truncated"] and len(enc["input_ids"]) == 128
    text = tok.decode(enc["input_ids"])
    assert "QUESTION_END" in text and text.rstrip().endswith("the answer<|im_end|>")
    assert tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE]).strip() == "the answer<|im_end|>"
