"""`tuneforge export` on a tiny random chat model with a LoRA adapter: merged folder, Modelfile, failures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from test_gguf_tiny import tiny_chat_model

from tuneforge.config import validate
from tuneforge.errors import UserError
from tuneforge.export.parity import GOLDEN_PROMPTS, ChatFormat, HFRunner, chat_format, check_chat_format
from tuneforge.recipes.export import ExportConfig, export, modelfile_text, stop_strings

SMOL_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant. Trả lời ngắn gọn.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory):
    """A saved tiny model and a LoRA adapter on it with non-zero B (so merging changes the weights)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_chat_model(seed=1)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(root / "adapter")
    return root


def test_merged_export_is_a_plain_transformers_folder(tiny_with_adapter, tmp_path):
    root = tiny_with_adapter
    cfg = ExportConfig(name="merged", output_dir=str(tmp_path), model=str(root / "base"), adapter=str(root / "adapter"),
                       format="merged", parity={"max_new_tokens": 12})
    out = export(cfg)
    folder = out / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "chat_template.jinja"} <= names
    assert not any("adapter" in n for n in names)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["exact_match_rate"] == 1.0 and parity["prompt_match_rate"] == 1.0 and parity["problems"] == []
    assert parity["prompts"] == len(GOLDEN_PROMPTS)
    assert "Parity on golden prompts" in (out / "report.md").read_text()
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 2

    # A fresh interpreter with only transformers: loads, keeps the chat template, and never imports peft.
    messages = GOLDEN_PROMPTS[3]  # the Vietnamese one
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}); t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        f"text = t.apply_chat_template({messages!r}, tokenize=False, add_generation_prompt=True)\n"
        "ids = t(text, add_special_tokens=False, return_tensors='pt').input_ids\n"
        "out = m.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()\n"
        "print(json.dumps({'tokens': out, 'peft': 'peft' in sys.modules, 'tuneforge': 'tuneforge' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peft"] is False and result["tuneforge"] is False

    from tuneforge.models import load_model

    source, tok = load_model(str(root / "base"), dtype="float32", adapter=str(root / "adapter"), device="cpu")
    runner = HFRunner(source, tok)
    want = runner.greedy(runner.prompt_ids(messages), 10, runner.stop_ids())
    assert result["tokens"][: len(want)] == want
    base, _ = load_model(str(root / "base"), dtype="float32", device="cpu")
    base_out = HFRunner(base, tok).greedy(runner.prompt_ids(messages), 10, runner.stop_ids())
    assert base_out != want  # the adapter matters, so equal tokens above mean it was merged


def test_chat_format_reads_default_system_and_modelfile_matches(tiny_with_adapter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_with_adapter / "base"))
    tok.chat_template = SMOL_LIKE
    fmt = chat_format(tok)
    assert fmt == ChatFormat(
        prefix="", system_start="<|im_start|>system\n", system_end="<|im_end|>\n", user_start="<|im_start|>user\n",
        user_end="<|im_end|>\n", assistant_start="<|im_start|>assistant\n", assistant_end="<|im_end|>\n",
        default_system="You are a helpful assistant. Trả lời ngắn gọn.",
    )
    assert check_chat_format(tok, fmt) == []
    stops, problems = stop_strings(tok, {tok.eos_token_id}, fmt)
    assert stops == ["<|im_end|>"] and problems == []
    text = modelfile_text(fmt, "model-q8_0.gguf", stops, 2048)
    assert text.splitlines()[2] == "FROM ./model-q8_0.gguf"
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
    )
    assert 'SYSTEM """You are a helpful assistant. Trả lời ngắn gọn."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_template_ollama_cannot_express_is_reported(tiny_with_adapter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_with_adapter / "base"))
    # Numbered turns: fine for transformers, impossible for a template made of fixed pieces.
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + loop.index|string + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    try:
        problems = check_chat_format(tok, chat_format(tok))
    except ValueError as e:  # ChatFormatError: cannot even be cut into pieces
        problems = [str(e)]
    assert problems


def test_stop_token_that_does_not_close_the_turn_fails_the_gguf_export(tiny_with_adapter, tmp_path):
    root = tiny_with_adapter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(root / "base"))
    tok.eos_token = "<|endoftext|>"  # the template still closes turns with <|im_end|>
    tok.save_pretrained(root / "base-bad-eos")
    import shutil

    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(root / "base" / f, root / "base-bad-eos" / f)
    cfg_json = json.loads((root / "base-bad-eos" / "generation_config.json").read_text())
    cfg_json["eos_token_id"] = tok.eos_token_id
    (root / "base-bad-eos" / "generation_config.json").write_text(json.dumps(cfg_json))
    cfg = ExportConfig(name="bad", output_dir=str(tmp_path), model=str(root / "base-bad-eos"), format="gguf", gguf_type="f16")
    with pytest.raises(UserError, match=r"closes an assistant turn with '<\|im_end\|>\\n'.*stop tokens are \['<\|endoftext\|>'\]"):
        export(cfg)
    assert not (tmp_path / "bad").exists()  # nothing that looks finished


def test_unknown_format_is_a_config_error():
    with pytest.raises(UserError, match="format"):
        validate(ExportConfig, {"format": "onnx"})
    with pytest.raises(UserError, match="gguf_type"):
        validate(ExportConfig, {"format": "gguf", "gguf_type": "q4_k"})
    with pytest.raises(UserError, match="save_dtype"):
        validate(ExportConfig, {"dtype": "bfloat16"})


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_k_quant_export_weighted_by_task_rows_is_a_complete_ollama_folder(tiny_with_adapter, tmp_path):
    from tuneforge.compress.quant.llamacpp_quantize import matrix_types

    root = tiny_with_adapter
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nphim này thật tuyệt vời\t1\nan ugly mess .\t0\n", encoding="utf-8")
    cfg = validate(ExportConfig, {
        "name": "k", "output_dir": str(tmp_path / "out"), "model": str(root / "base"), "adapter": str(root / "adapter"),
        "format": "gguf", "gguf_type": "q5_k_m", "task": {"name": "sentiment"},
        "data": {"train": {"path": str(tmp_path / "train.tsv"), "text_column": "sentence", "label_column": "label"}},
        "gguf": {"imatrix_rows": 2},
    })
    out = export(cfg)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Modelfile", "config.yaml", "model-q5_k_m.gguf", "parity.json", "report.html", "report.md"])
    assert "FROM ./model-q5_k_m.gguf" in (out / "Modelfile").read_text()
    types = matrix_types(out / "model-q5_k_m.gguf")
    assert sum(types.values()) == 2 * 7 + 1 and "F32" not in types  # 7 linears a block + the tied embedding
    assert json.loads((out / "parity.json").read_text())["prompts"] > 0
    report = (out / "report.md").read_text()
    assert "matrices by GGUF type" in report and "not a multiple of the 256" in report  # rows of 64: the fallback


def test_imatrix_needs_a_quantized_gguf_type_and_training_rows():
    train = {"train": {"path": "x.tsv"}}
    for gguf_type in ("f16", "q8_0"):  # not quantized / ggml's Q8_0 encoder ignores an imatrix
        with pytest.raises(UserError, match=f"imatrix_rows weights GGUF types q4_0, .* only .* not gguf_type {gguf_type}"):
            validate(ExportConfig, {"format": "gguf", "gguf_type": gguf_type, "gguf": {"imatrix_rows": 8}, "data": train})
    with pytest.raises(UserError, match="not format merged"):
        validate(ExportConfig, {"format": "merged", "gguf": {"imatrix_rows": 8}, "data": train})
    with pytest.raises(UserError, match="imatrix_rows needs data.train"):
        validate(ExportConfig, {"format": "gguf", "gguf_type": "q4_k_m", "gguf": {"imatrix_rows": 8}})


@pytest.mark.parametrize("gguf_type, extra, says", [
    ("q4_k_m", {}, "gguf_type q4_k_m needs"),
    ("q4_0", {"gguf": {"imatrix_rows": 2}, "parity": {"enabled": False}}, "gguf_type q4_0 with an imatrix needs"),
    ("q8_0", {}, "the GGUF parity check .* needs"),
])
def test_gguf_export_without_llama_cpp_is_refused_before_any_work(tiny_with_adapter, tmp_path, monkeypatch, gguf_type, extra, says):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **kw: None if name == "llama_cpp" else real(name, *a, **kw))
    cfg = validate(ExportConfig, {"name": "k", "output_dir": str(tmp_path), "model": str(tiny_with_adapter / "base"),
                                  "format": "gguf", "gguf_type": gguf_type, "data": {"train": {"path": "x.tsv"}}, **extra})
    with pytest.raises(UserError, match=says + " llama-cpp-python"):
        export(cfg)
    assert not (tmp_path / "k").exists()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_gguf_adapter_export_is_an_adapter_a_base_and_their_parity(tiny_with_adapter, tmp_path):
    """A model not imported from a GGUF: the base is written at gguf_type; in F32 base + adapter answers like the
    merged GGUF."""
    import gguf

    root = tiny_with_adapter
    cfg = validate(ExportConfig, {"name": "a", "output_dir": str(tmp_path), "model": str(root / "base"),
                                  "adapter": str(root / "adapter"), "format": "gguf_adapter", "gguf_type": "f32",
                                  "parity": {"max_new_tokens": 12, "min_match_rate": 1.0}})
    out = export(cfg)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Modelfile", "adapter.gguf", "adapter.json", "base-f32.gguf", "config.yaml", "parity.json", "report.html",
         "report.md"])  # the merged reference was a temporary file
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["adapter"] == "adapter.gguf" and manifest["base"] == "base-f32.gguf"
    assert manifest["base_type"] == "f32" and manifest["lora_alpha"] == 8.0 and manifest["ranks"] == [4]
    assert manifest["weights"] == 3 * 2  # q, v, up in two blocks
    assert gguf.GGUFReader(out / "adapter.gguf").fields["general.type"].contents() == "adapter"
    assert "adapter_base: write" in (out / "config.yaml").read_text()  # auto, resolved
    modelfile = (out / "Modelfile").read_text().splitlines()
    assert modelfile[2:4] == ["FROM ./base-f32.gguf", "ADAPTER ./adapter.gguf"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["exact_match_rate"] == 1.0 and parity["problems"] == [] and parity["prompt_match_rate"] == 1.0
    # Against PyTorch llama.cpp may part at a near-tie (its KV cache is F16): the merged GGUF parts at the same token.
    vs_pytorch, merged_vs_pytorch = parity["adapter_vs_pytorch"], parity["merged_gguf_vs_pytorch"]
    assert vs_pytorch["equivalent_rate"] == 1.0 and vs_pytorch["token_agreement"] > 0.9
    assert vs_pytorch["first_differences"] == merged_vs_pytorch["first_differences"]
    report = (out / "report.md").read_text()
    assert "GGUF LoRA adapter (F32) on a F32 base" in report and "llama_adapter_lora_init" in report


def test_gguf_adapter_export_refuses_dora_and_leaves_nothing(tiny_with_adapter, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_chat_model(seed=1)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(tmp_path / "dora")
    cfg = validate(ExportConfig, {"name": "d", "output_dir": str(tmp_path / "out"), "model": str(tiny_with_adapter / "base"),
                                  "adapter": str(tmp_path / "dora"), "format": "gguf_adapter", "parity": {"enabled": False}})
    with pytest.raises(UserError, match=f"adapter {tmp_path / 'dora'} cannot be written .* DoRA"):
        export(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_gguf_adapter_config_errors(tiny_with_adapter, tmp_path):
    with pytest.raises(UserError, match="format gguf_adapter writes a LoRA adapter: set adapter"):
        validate(ExportConfig, {"format": "gguf_adapter"})
    with pytest.raises(UserError, match="imatrix_rows: not with format gguf_adapter"):
        validate(ExportConfig, {"format": "gguf_adapter", "adapter": "a", "gguf_type": "q4_0", "gguf": {"imatrix_rows": 8},
                                "data": {"train": {"path": "x.tsv"}}})
    cfg = validate(ExportConfig, {"name": "s", "output_dir": str(tmp_path), "model": str(tiny_with_adapter / "base"),
                                  "adapter": str(tiny_with_adapter / "adapter"), "format": "gguf_adapter",
                                  "adapter_base": "source"})
    with pytest.raises(UserError, match="was not imported from a GGUF file .* set adapter_base: write"):
        export(cfg)
    assert not (tmp_path / "s").exists()
