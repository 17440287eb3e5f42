"""`tuneforge export CONFIG`: a deployable artifact, checked for parity with the model it came from.

    format=merged: base + LoRA merged ─► model/ (plain Hugging Face folder: weights, tokenizer, chat
                   template, generation config; loads with transformers alone, no peft, no tuneforge)
    format=gguf:   merged ─► model-<type>.gguf (F16 / Q8_0 / Q4_0, or a K-quant by llama.cpp's quantizer)
                   + Modelfile for Ollama
    then always:   golden prompts through source and export, greedy, tokens compared ─► parity.json, report

The whole folder is written under a temporary name and renamed only when the checks pass: a chat
template or stop token that does not survive the export fails it with the reason, and no artifact
that looks finished is left behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.compress.sections import GGUFSection, ParitySection, check_imatrix
from tuneforge.config import RunConfig
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, write_json, write_text


class ExportParitySection(ParitySection):
    min_match_rate: float = Field(0.0, ge=0, le=1, description="fail the export when a smaller share of golden answers is token-identical")


class ExportConfig(RunConfig):
    format: Literal["merged", "gguf"] = Field("merged", description="merged: Hugging Face folder; gguf: one file for llama.cpp / Ollama")
    gguf_type: Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] = Field(
        "q8_0", description="format=gguf: tensor type of the weight matrices (K-quants: llama.cpp's per-tensor mixes)")
    save_dtype: Literal["source", "float32", "bfloat16", "float16"] = Field("source", description="format=merged: dtype of the saved weights; source = the checkpoint's own")
    ollama: bool = Field(True, description="format=gguf: write an Ollama Modelfile (TEMPLATE, SYSTEM, stop) next to the file")
    gguf: GGUFSection = Field(default_factory=GGUFSection)
    parity: ExportParitySection = Field(default_factory=ExportParitySection)

    @model_validator(mode="after")
    def _dtype_is_save_dtype(self):
        if self.dtype != "auto":
            raise ValueError("dtype: export merges in float32 and saves in save_dtype; set save_dtype instead")
        return self

    @model_validator(mode="after")
    def _imatrix_is_for_quantized_gguf(self):
        check_imatrix(self.gguf, self.gguf_type if self.format == "gguf" else None, self.data,
                      f"gguf_type {self.gguf_type}" if self.format == "gguf" else f"format {self.format}")
        return self


# -- Ollama ---------------------------------------------------------------------------------------------


def go_literal(text: str) -> str:
    """Text placed verbatim in a Go template: only '{{' would be read as an action."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(fmt, gguf_name: str, stops: list[str], n_ctx: int) -> str:
    """An Ollama Modelfile whose TEMPLATE renders exactly like `fmt.render` (see tuneforge.export.parity.ChatFormat)."""
    lit = go_literal
    template = (
        f"{lit(fmt.prefix)}{{{{ if .System }}}}{lit(fmt.system_start)}{{{{ .System }}}}{lit(fmt.system_end)}{{{{ end }}}}"
        f"{{{{ range .Messages }}}}{{{{ if eq .Role \"user\" }}}}{lit(fmt.user_start)}{{{{ .Content }}}}{lit(fmt.user_end)}"
        f"{lit(fmt.assistant_start)}{{{{ else if eq .Role \"assistant\" }}}}{{{{ .Content }}}}{lit(fmt.assistant_end)}"
        "{{ end }}{{ end }}"
    )
    if '"""' in template or (fmt.default_system and '"""' in fmt.default_system):
        raise UserError('the chat template contains """, which an Ollama Modelfile cannot quote; set ollama: false')
    lines = [
        "# Ollama Modelfile written by `tuneforge export`. Create the model with:",
        "#   ollama create my-model -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    if fmt.default_system:
        lines.append(f'SYSTEM """{fmt.default_system}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {n_ctx}")
    return "\n".join(lines) + "\n"


def stop_strings(tok, stop_ids: set[int], fmt) -> tuple[list[str], list[str]]:
    """(stop strings for Ollama, problems): every end-of-turn id must have a text and close the assistant turn."""
    problems = []
    stops = []
    for tid in sorted(stop_ids):
        text = tok.convert_ids_to_tokens(tid)
        if not text:
            problems.append(f"stop token id {tid} has no text in the tokenizer; Ollama stops on strings")
        else:
            stops.append(text)
    if fmt.assistant_end.strip() and not any(fmt.assistant_end.startswith(s) for s in stops):
        problems.append(
            f"the chat template closes an assistant turn with {fmt.assistant_end!r}, but the stop tokens are {stops}: "
            "the model would not stop where the template ends its turn; set the tokenizer's eos_token to the end-of-turn token"
        )
    return stops, problems


# -- exports --------------------------------------------------------------------------------------------


def save_dtype_of(cfg: ExportConfig, model_folder: str) -> str:
    if cfg.save_dtype != "source":
        return cfg.save_dtype
    config = Path(model_folder) / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        dtype = data.get("dtype") or data.get("torch_dtype")
        if dtype in ("float32", "bfloat16", "float16"):
            return dtype
    return "float32"


def generation_config_for(model, tok, stop_ids: set[int]):
    """The export's generation config: greedy by default is the model's own; stop ids and pad are made explicit."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_dict(model.generation_config.to_dict()) if getattr(model, "generation_config", None) else GenerationConfig()
    gen.eos_token_id = sorted(stop_ids) if len(stop_ids) > 1 else next(iter(stop_ids))
    gen.bos_token_id = tok.bos_token_id
    gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return gen


def export_merged(cfg: ExportConfig, out: Path, source_runner):
    """Merge, save model/ in the chosen dtype, reload it with plain transformers; returns the export runner."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export.parity import HFRunner
    from tuneforge.models import load_model, resolve_model
    from tuneforge.models.saving import save_model

    dtype = save_dtype_of(cfg, resolve_model(cfg.model))
    merged, tok = load_model(cfg.model, dtype="float32", adapter=cfg.adapter, device="cpu")
    if cfg.adapter:
        merged = merged.merge_and_unload()  # merge in fp32, then cast: one rounding instead of two
    merged.to(getattr(torch, dtype))
    merged.generation_config = generation_config_for(merged, tok, source_runner.stop_ids())
    folder = save_model(merged, tok, out / "model")
    del merged
    if (folder / "adapter_config.json").exists():
        raise UserError("internal: the merged export still holds an adapter")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
    return HFRunner(model, AutoTokenizer.from_pretrained(str(folder))), folder


def export_gguf(cfg: ExportConfig, out: Path, source_model, tok) -> Path:
    """Write the GGUF and the Modelfile; a template or stop token Ollama would get wrong fails here."""
    from tuneforge.compress.calibration import gguf_importance
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source
    from tuneforge.compress.quant.llamacpp_quantize import write_any_gguf
    from tuneforge.export.parity import ChatFormatError, chat_format, check_chat_format, stop_ids_of
    from tuneforge.models import resolve_model
    from tuneforge.tasks.splits import build_task

    pre = cfg.gguf.pre_tokenizer or pre_tokenizer_from_source(resolve_model(cfg.model))
    # the task is built only when needed: an export config without an imatrix need not name one
    importance, _ = gguf_importance(cfg, source_model, tok, build_task(cfg)) if cfg.gguf.imatrix_rows else (None, 0)
    path = write_any_gguf(source_model, tok, out / f"model-{cfg.gguf_type}.gguf", cfg.gguf_type, pre_tokenizer=pre,
                          importance=importance, threads=cfg.gguf.threads)
    problems: list[str] = []
    if cfg.ollama:
        try:
            fmt = chat_format(tok)
        except ChatFormatError as e:
            raise UserError(f"the chat template cannot be written as an Ollama TEMPLATE ({e}); set ollama: false to export the GGUF alone") from None
        problems += check_chat_format(tok, fmt)
        stops, stop_problems = stop_strings(tok, stop_ids_of(tok, source_model.generation_config), fmt)
        problems += stop_problems
        if problems:
            raise UserError("export failed: the Ollama Modelfile would not behave like the chat template:\n"
                            + "\n".join(f"  - {p}" for p in problems))
        write_text(out / "Modelfile", modelfile_text(fmt, path.name, stops, cfg.gguf.n_ctx))
    return path


def free_folder(cfg: ExportConfig) -> Path:
    base = Path(cfg.output_dir) / cfg.name
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def export(cfg: ExportConfig) -> Path:
    from tuneforge.compress.quant.llamacpp import require_llama_cpp
    from tuneforge.compress.quant.llamacpp_quantize import k_quant_fallback_note, needs_llamacpp_quantizer
    from tuneforge.export.parity import HFRunner, file_weights_parity, run_parity
    from tuneforge.models import load_model
    from tuneforge.models.loading import load_merged
    from tuneforge.runs import resolved_config_yaml

    if cfg.format == "gguf" and needs_llamacpp_quantizer(cfg.gguf_type, bool(cfg.gguf.imatrix_rows)):
        require_llama_cpp(f"gguf_type {cfg.gguf_type}" + (" with an imatrix" if cfg.gguf.imatrix_rows else ""))
    if cfg.format == "gguf" and cfg.parity.enabled:
        require_llama_cpp("the GGUF parity check (parity.enabled=false skips it)")
    target = free_folder(cfg)
    with atomic_dir(target) as out:
        write_text(out / "config.yaml", resolved_config_yaml(cfg))
        gguf_note = None
        if cfg.format == "merged":
            # The source keeps its adapter unmerged, so parity also checks the merge itself.
            source, tok = load_model(cfg.model, dtype="float32", adapter=cfg.adapter, device="cpu")
            source_runner = HFRunner(source, tok)
            export_runner, artifact = export_merged(cfg, out, source_runner)
        else:
            from tuneforge.compress.quant.llamacpp import LlamaCppRunner

            source, tok = load_merged(cfg.model, cfg.adapter, "float32")
            source_runner = HFRunner(source, tok)
            artifact = export_gguf(cfg, out, source, tok)
            if gguf_note := k_quant_fallback_note(source, cfg.gguf_type):
                print(f"note: {gguf_note}")
            export_runner = LlamaCppRunner(artifact, n_ctx=cfg.gguf.n_ctx, n_threads=cfg.gguf.threads) if cfg.parity.enabled else None
        parity = run_parity(source_runner, export_runner, max_new_tokens=cfg.parity.max_new_tokens,
                            desc="parity") if cfg.parity.enabled else None
        problems = parity.problems if parity else []
        file_parity = None
        if parity and cfg.format == "gguf" and cfg.parity.file_weights:
            file_parity = file_weights_parity(source_runner, artifact, source_runner.tok, max_new_tokens=cfg.parity.max_new_tokens)
        if parity:
            write_json(out / "parity.json", {**parity.summary(), "rows": parity.rows, "file_weights": file_parity})
        write_export_report(out, cfg, artifact, parity, problems, file_parity, gguf_note)
        if problems:
            raise UserError("export failed its parity check:\n" + "\n".join(f"  - {p}" for p in problems))
        if parity and parity.exact_match_rate < cfg.parity.min_match_rate:
            raise UserError(
                f"export failed its parity check: {parity.exact_match_rate:.0%} of golden answers are token-identical, "
                f"below parity.min_match_rate={cfg.parity.min_match_rate}"
            )
    artifact = target / artifact.relative_to(out)
    line = f"export: {artifact}"
    if parity:
        line += (f" (golden prompts identical: {parity.exact_match_rate:.0%}, identical or first differing at a "
                 f"near-tie: {parity.equivalent_rate:.0%}, token agreement {parity.token_agreement:.3f})")
    if file_parity and "exact_match_rate" in file_parity:
        line += f"; the file's own weights in PyTorch answer {file_parity['exact_match_rate']:.0%} identically"
    print(line)
    return target


def write_export_report(out: Path, cfg: ExportConfig, artifact: Path, parity, problems: list[str],
                        file_parity: dict | None = None, gguf_note: str | None = None) -> None:
    from tuneforge.compress.measure import weights_size
    from tuneforge.export.parity import file_parity_report
    from tuneforge.report import write_report

    kind = "merged Hugging Face folder" if cfg.format == "merged" else f"GGUF {cfg.gguf_type.upper()}"
    summary = [("artifact", artifact.name), ("kind", kind), ("size MB", weights_size(artifact) / 1e6),
               ("model", cfg.model or "embedded default"), ("adapter", cfg.adapter or "none")]
    if cfg.format == "gguf":
        from tuneforge.compress.quant.llamacpp_quantize import matrix_types, types_line

        summary.append(("matrices by GGUF type", types_line(matrix_types(artifact))))
    tables = []
    if parity:
        summary += [("golden prompts identical", parity.exact_match_rate),
                    ("identical or first differing at a near-tie", parity.equivalent_rate),
                    ("token agreement", parity.token_agreement),
                    ("prompt tokens identical", parity.prompt_match_rate)]
        tables.append(("Parity on golden prompts (greedy)", [
            {"prompt": r["prompt"], "same prompt tokens": r["prompt_tokens_equal"], "same answer": r["tokens_equal"],
             "first difference": r["first_difference"], "source": r["source_text"], "export": r["export_text"]}
            for r in parity.rows
        ]))
    file_rows, file_notes = file_parity_report(file_parity)
    summary += file_rows
    notes = [f"problem: {p}" for p in problems] + file_notes + ([gguf_note] if gguf_note else [])
    if cfg.format == "gguf" and cfg.ollama:
        notes.append("Modelfile: `ollama create NAME -f Modelfile` in this folder (its TEMPLATE was checked against the chat template).")
    write_report(out, title=f"Export: {kind}", summary=summary, tables=tables, images=[], notes=notes)


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    export(config_from_args(ExportConfig, args))
    return 0
