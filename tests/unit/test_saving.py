"""models.saving.save_model: the one way a model folder is written (whole model + tokenizer, or an adapter)."""

from __future__ import annotations

import json

from test_gguf_tiny import tiny_chat_model

from tuneforge.models.saving import save_model


def test_a_model_folder_holds_weights_tokenizer_and_extra_files(tmp_path):
    model, tok = tiny_chat_model()
    folder = save_model(model, tok, tmp_path / "model", extra_files={"source.json": json.dumps({"a": 1})})
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "source.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the temporary folder was renamed


def test_a_peft_model_saves_its_adapter_alone(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_chat_model()
    folder = save_model(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])), tok, tmp_path / "adapter")
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not names & {"config.json", "model.safetensors", "tokenizer.json"}
