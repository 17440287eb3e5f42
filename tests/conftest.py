"""Shared fixtures: the embedded tokenizer, a tiny random Llama saved with it, real-data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from tuneforge.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A 2-block random Llama with the embedded model's tokenizer and chat template, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=embedded_tokenizer.bos_token_id,
                      eos_token_id=embedded_tokenizer.eos_token_id, pad_token_id=embedded_tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    embedded_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def sentiment_tsv(tmp_path) -> Path:
    """A small labelled TSV (with Vietnamese rows) written here, not copied from any data set."""
    rows = ["sentence\tlabel", "a warm , funny film\t1", "dull and far too long\t0", "I loved every minute\t1",
            "the plot makes no sense\t0", "bộ phim rất hay\t1", "diễn viên đóng dở\t0", "a gem\t1", "a mess\t0"]
    path = tmp_path / "sentiment.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models run fastest on one thread; the embedded model (integration) uses every core."""
    import os

    import torch

    heavy = request.node.get_closest_marker("integration") or request.node.get_closest_marker("e2e")
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1) if heavy else 1)
    yield
    torch.set_num_threads(previous)
