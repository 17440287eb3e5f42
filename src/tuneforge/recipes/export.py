"""`tuneforge export CONFIG`: a deployable artifact, checked for parity with the model it came from.

    format=merged: base + LoRA merged ─► model/ (plain Hugging Face folder: weights, tokenizer, chat
                   template, generation config; loads with transformers alone, no peft, no tuneforge)
    format=gguf:   merged ─► model-<type>.gguf (F16 / Q8_0 / Q4_1 / Q4_0, or a K-quant by llama.cpp's quantizer)
                   + Modelfile for Ollama
    format=gguf_adapter: the LoRA adapter alone ─► adapter.gguf (llama.cpp's GGUF LoRA format, F32 or F16), applied
                   at load time to a base GGUF of the same model (llama.cpp's llama_adapter_lora_init; llama-cpp-python
                   `Llama(model_path=BASE, lora_path=ADAPTER)`; Ollama's ADAPTER): one base serves several adapters.
                   The base: the GGUF the model was imported from (the embedded model's packaged Q4_1 file, named by
                   path) or base-<gguf_type>.gguf written here (adapter_base). adapter.json names both, + Modelfile
    then always:   golden prompts through source and export, greedy, tokens compared ─► parity.json, report
                   (gguf_adapter: base + adapter.gguf through llama.cpp against the merged GGUF of the same adapter at
                   the base's type, written to a temporary file; and both against the merged model in PyTorch)

The whole folder is written under a temporary name and renamed only when the checks pass: a chat
template or stop token that does not survive the export fails it with the reason, and no artifact
that looks finished is left behind.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.compress.sections import GGUFSection, ParitySection, check_imatrix
from tuneforge.config import RunConfig
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, write_json, write_text


class ExportParitySection(ParitySection):
    min_match_rate: float = Field(0.0, ge=0, le=1, description="fail the export when a smaller share of golden answers "
                                  "is token-identical (gguf_adapter: base + adapter against the merged GGUF)")


class ExportConfig(RunConfig):
    format: Literal["merged", "gguf", "gguf_adapter"] = Field(
        "merged", description="merged: Hugging Face folder; gguf: one file for llama.cpp / Ollama; gguf_adapter: the "
        "LoRA adapter alone as a llama.cpp GGUF LoRA (adapter.gguf), applied to a base GGUF when it is loaded")
    gguf_type: Literal["f32", "f16", "q8_0", "q4_1", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] = Field(
        "q8_0", description="format=gguf: tensor type of the weight matrices (K-quants: llama.cpp's per-tensor mixes); "
        "format=gguf_adapter: the type of the base GGUF written when adapter_base is write")
    adapter_base: Literal["auto", "source", "write"] = Field(
        "auto", description="format=gguf_adapter: the base GGUF the adapter is applied to and checked on. source: the "
        "GGUF the model was imported from (the embedded model's packaged Q4_1 file), named by path in adapter.json, "
        "not copied; write: base-<gguf_type>.gguf written into the folder; auto: source for a model imported from a "
        "GGUF when gguf_type is not set, else write")
    adapter_type: Literal["f32", "f16"] = Field("f32", description="format=gguf_adapter: tensor type of lora_a / lora_b "
                                                "(f32 keeps the adapter's own numbers)")
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
    def _gguf_adapter_needs_an_adapter(self):
        if self.format == "gguf_adapter" and not self.adapter:
            raise ValueError("format gguf_adapter writes a LoRA adapter: set adapter to the run's adapter/ folder")
        if self.format == "gguf_adapter" and self.gguf.imatrix_rows:
            raise ValueError("gguf.imatrix_rows: not with format gguf_adapter (its base and merged reference are "
                             "unweighted); set gguf.imatrix_rows=0")
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


def modelfile_text(fmt, gguf_name: str, stops: list[str], n_ctx: int, adapter: str | None = None) -> str:
    """An Ollama Modelfile whose TEMPLATE renders exactly like `fmt.render` (see tuneforge.export.parity.ChatFormat).

    `gguf_name`: the model file, beside the Modelfile or an absolute path; `adapter`: a GGUF LoRA beside it."""
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
        f"FROM {gguf_name if Path(gguf_name).is_absolute() else './' + gguf_name}",
        *([f"ADAPTER ./{adapter}"] if adapter else []),
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

ADAPTER_PARITY = " (base + adapter against the merged GGUF)"  # what format=gguf_adapter's parity compares


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
    """Write the GGUF and the Modelfile."""
    from tuneforge.compress.calibration import gguf_importance
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source
    from tuneforge.compress.quant.llamacpp_quantize import write_any_gguf
    from tuneforge.models import resolve_model
    from tuneforge.tasks.splits import build_task

    pre = cfg.gguf.pre_tokenizer or pre_tokenizer_from_source(resolve_model(cfg.model))
    # the task is built only when needed: an export config without an imatrix need not name one
    importance, _ = gguf_importance(cfg, source_model, tok, build_task(cfg)) if cfg.gguf.imatrix_rows else (None, 0)
    path = write_any_gguf(source_model, tok, out / f"model-{cfg.gguf_type}.gguf", cfg.gguf_type, pre_tokenizer=pre,
                          importance=importance, threads=cfg.gguf.threads)
    if cfg.ollama:
        write_modelfile(cfg, out, tok, source_model.generation_config, path.name)
    return path


def write_modelfile(cfg: ExportConfig, out: Path, tok, generation_config, gguf_name: str, adapter: str | None = None) -> None:
    """The Ollama Modelfile; a template or stop token Ollama would get wrong fails the export here."""
    from tuneforge.export.parity import ChatFormatError, chat_format, check_chat_format, stop_ids_of

    try:
        fmt = chat_format(tok)
    except ChatFormatError as e:
        raise UserError(f"the chat template cannot be written as an Ollama TEMPLATE ({e}); set ollama: false to export the GGUF alone") from None
    problems = check_chat_format(tok, fmt)
    stops, stop_problems = stop_strings(tok, stop_ids_of(tok, generation_config), fmt)
    problems += stop_problems
    if problems:
        raise UserError("export failed: the Ollama Modelfile would not behave like the chat template:\n"
                        + "\n".join(f"  - {p}" for p in problems))
    write_text(out / "Modelfile", modelfile_text(fmt, gguf_name, stops, cfg.gguf.n_ctx, adapter))


def resolve_adapter_base(cfg: ExportConfig) -> ExportConfig:
    """format=gguf_adapter: the config with adapter_base resolved to source or write and gguf_type set to the base's
    type, so that the run folder's config.yaml says which base was used and exports the same again."""
    from tuneforge.compress.quant.gguf_writer import GGUF_TYPES, file_type_name, source_gguf
    from tuneforge.compress.quant.llamacpp_quantize import LLAMACPP_TYPES
    from tuneforge.models import resolve_model

    source = source_gguf(resolve_model(cfg.model))
    explicit = "gguf_type" in cfg.model_fields_set
    if cfg.adapter_base == "write" or (cfg.adapter_base == "auto" and (source is None or explicit)):
        return cfg.model_copy(update={"adapter_base": "write"})
    if source is None:
        raise UserError(f"adapter_base source: model '{cfg.model}' was not imported from a GGUF file (the embedded model "
                        f"is), so there is no source GGUF; set adapter_base: write to write base-{cfg.gguf_type}.gguf")
    qtype = file_type_name(source)
    if qtype not in (*GGUF_TYPES, *LLAMACPP_TYPES):
        raise UserError(f"the source GGUF {source} is of type {qtype or 'unknown'}, which tuneforge cannot write for the "
                        "merged reference the adapter is checked against; set adapter_base: write")
    if explicit and qtype != cfg.gguf_type:
        raise UserError(f"gguf_type {cfg.gguf_type} with adapter_base source: the source GGUF {source.name} is {qtype}; "
                        f"leave gguf_type out, or set adapter_base: write to write a {cfg.gguf_type} base")
    return cfg.model_copy(update={"adapter_base": "source", "gguf_type": qtype})


@dataclass
class AdapterExport:
    adapter: Path          # adapter.gguf, in the folder
    base: Path             # the base GGUF: base-<type>.gguf in the folder, or the source GGUF
    reference: Path | None  # the merged GGUF at the base's type (a temporary file), when parity runs
    merged: object         # the merged model in PyTorch (float32) and its tokenizer
    tok: object
    lora: object           # tuneforge.compress.quant.gguf_lora.LoraTensors
    manifest: dict         # what adapter.json says


def export_gguf_adapter(cfg: ExportConfig, out: Path, scratch: Path) -> AdapterExport:
    """adapter.gguf, the base GGUF when adapter_base is write, adapter.json and the Modelfile; with parity, the merged
    GGUF of the same adapter at the base's type in `scratch` (a folder removed before the export is renamed)."""
    from tuneforge.compress.quant.gguf_lora import write_gguf_lora
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source, source_gguf
    from tuneforge.compress.quant.llamacpp_quantize import write_any_gguf
    from tuneforge.models import load_model
    from tuneforge.models.inspect import load_model_config
    from tuneforge.models.loading import load_merged

    config, folder = load_model_config(cfg.model)
    adapter = out / "adapter.gguf"
    lora = write_gguf_lora(cfg.adapter, config, adapter, adapter_type=cfg.adapter_type, name=cfg.name)  # refusals come first
    pre = cfg.gguf.pre_tokenizer or pre_tokenizer_from_source(folder)
    if cfg.adapter_base == "source":
        base = source_gguf(folder)
    else:
        base_model, tok = load_model(cfg.model, dtype="float32", device="cpu")
        base = write_any_gguf(base_model.eval(), tok, out / f"base-{cfg.gguf_type}.gguf", cfg.gguf_type, pre_tokenizer=pre,
                              threads=cfg.gguf.threads)
        del base_model
    merged, tok = load_merged(cfg.model, cfg.adapter, "float32")
    reference = write_any_gguf(merged, tok, scratch / f"merged-{cfg.gguf_type}.gguf", cfg.gguf_type, pre_tokenizer=pre,
                               threads=cfg.gguf.threads) if cfg.parity.enabled else None
    base_ref = base.name if base.parent == out else str(base.resolve())
    manifest = {
        "format": "llama.cpp GGUF LoRA adapter",
        "adapter": adapter.name,
        "adapter_type": cfg.adapter_type,
        "base": base_ref,  # beside this file, or an absolute path
        "base_type": cfg.gguf_type,
        "lora_alpha": lora.alpha,
        "ranks": lora.ranks,
        "weights": len(lora.pairs),
        "scale_folded_into_lora_b": lora.folded,
        "model": cfg.model or "embedded default",
        "peft_adapter": str(Path(cfg.adapter).expanduser().resolve()),
        "load": "llama.cpp: a = llama_adapter_lora_init(model, adapter) (NULL where it refuses the file), then "
                "llama_set_adapters_lora(ctx, &a, 1, &scale) with scale 1.0; llama-cpp-python: Llama(model_path=base, "
                "lora_path=adapter). Any GGUF of the same base model takes it; parity.json was measured on this base.",
    }
    write_json(out / "adapter.json", manifest)
    if cfg.ollama:
        write_modelfile(cfg, out, tok, merged.generation_config, base_ref, adapter.name)
    return AdapterExport(adapter, base, reference, merged, tok, lora, manifest)


def free_folder(cfg: ExportConfig) -> Path:
    base = Path(cfg.output_dir) / cfg.name
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def export(cfg: ExportConfig) -> Path:
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner, require_llama_cpp
    from tuneforge.compress.quant.llamacpp_quantize import k_quant_fallback_note, needs_llamacpp_quantizer
    from tuneforge.export.parity import CachedRunner, HFRunner, file_weights_parity, run_parity
    from tuneforge.models import load_model
    from tuneforge.models.loading import load_merged
    from tuneforge.runs import resolved_config_yaml

    if cfg.format == "gguf_adapter":
        cfg = resolve_adapter_base(cfg)
    writes_gguf = cfg.format == "gguf" or (cfg.format == "gguf_adapter" and (cfg.adapter_base == "write" or cfg.parity.enabled))
    if writes_gguf and needs_llamacpp_quantizer(cfg.gguf_type, bool(cfg.gguf.imatrix_rows)):
        require_llama_cpp(f"gguf_type {cfg.gguf_type}" + (" with an imatrix" if cfg.gguf.imatrix_rows else ""))
    if cfg.format != "merged" and cfg.parity.enabled:
        require_llama_cpp("the GGUF parity check (parity.enabled=false skips it)")
    target = free_folder(cfg)
    against_pytorch: dict = {}
    with atomic_dir(target) as out, ExitStack() as stack:
        write_text(out / "config.yaml", resolved_config_yaml(cfg))
        gguf_note, manifest = None, None
        llama = {"n_ctx": cfg.gguf.n_ctx, "n_threads": cfg.gguf.threads}
        if cfg.format == "merged":
            # The source keeps its adapter unmerged, so parity also checks the merge itself.
            source, tok = load_model(cfg.model, dtype="float32", adapter=cfg.adapter, device="cpu")
            source_runner = HFRunner(source, tok)
            export_runner, artifact = export_merged(cfg, out, source_runner)
        elif cfg.format == "gguf":
            source, tok = load_merged(cfg.model, cfg.adapter, "float32")
            source_runner = HFRunner(source, tok)
            artifact = export_gguf(cfg, out, source, tok)
            if gguf_note := k_quant_fallback_note(source, cfg.gguf_type):
                print(f"note: {gguf_note}")
            export_runner = LlamaCppRunner(artifact, **llama) if cfg.parity.enabled else None
        else:
            # The reference is the merged GGUF at the base's type: what the adapter replaces. Its temporary folder
            # is removed before the export is renamed (ExitStack closes first).
            made = export_gguf_adapter(cfg, out, Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".reference-"))))
            artifact, manifest = made.adapter, made.manifest
            if cfg.parity.enabled:
                source_runner = CachedRunner(LlamaCppRunner(made.reference, **llama))
                export_runner = CachedRunner(LlamaCppRunner(made.base, lora_path=made.adapter, **llama))
        parity = run_parity(source_runner, export_runner, max_new_tokens=cfg.parity.max_new_tokens,
                            desc="parity") if cfg.parity.enabled else None
        problems = parity.problems if parity else []
        file_parity = None
        if parity and cfg.format == "gguf" and cfg.parity.file_weights:
            file_parity = file_weights_parity(source_runner, artifact, source_runner.tok, max_new_tokens=cfg.parity.max_new_tokens)
        if parity and cfg.format == "gguf_adapter":
            pytorch = CachedRunner(HFRunner(made.merged, made.tok))
            for key, runner in (("adapter_vs_pytorch", export_runner), ("merged_gguf_vs_pytorch", source_runner)):
                result = run_parity(pytorch, runner, max_new_tokens=cfg.parity.max_new_tokens, desc=f"parity: {key}")
                against_pytorch[key] = {**result.summary(), "first_differences": [r["first_difference"] for r in result.rows]}
        if parity:
            write_json(out / "parity.json", {**parity.summary(), "rows": parity.rows, "file_weights": file_parity,
                                             **against_pytorch})
        write_export_report(out, cfg, artifact, parity, problems, file_parity, gguf_note, against_pytorch,
                            manifest)
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
        line += (f" (golden prompts identical{ADAPTER_PARITY if cfg.format == 'gguf_adapter' else ''}: "
                 f"{parity.exact_match_rate:.0%}, identical or first differing at a near-tie: {parity.equivalent_rate:.0%}, "
                 f"token agreement {parity.token_agreement:.3f})")
    if file_parity and "exact_match_rate" in file_parity:
        line += f"; the file's own weights in PyTorch answer {file_parity['exact_match_rate']:.0%} identically"
    if against_pytorch:
        line += (f"; against the merged model in PyTorch: base + adapter {against_pytorch['adapter_vs_pytorch']['exact_match_rate']:.0%}, "
                 f"the merged GGUF {against_pytorch['merged_gguf_vs_pytorch']['exact_match_rate']:.0%}")
    print(line)
    return target


def write_export_report(out: Path, cfg: ExportConfig, artifact: Path, parity, problems: list[str],
                        file_parity: dict | None = None, gguf_note: str | None = None,
                        against_pytorch: dict | None = None, manifest: dict | None = None) -> None:
    from tuneforge.compress.measure import weights_size
    from tuneforge.export.parity import file_parity_report
    from tuneforge.report import write_report

    kind = {"merged": "merged Hugging Face folder", "gguf": f"GGUF {cfg.gguf_type.upper()}",
            "gguf_adapter": f"GGUF LoRA adapter ({cfg.adapter_type.upper()}) on a {cfg.gguf_type.upper()} base"}[cfg.format]
    summary = [("artifact", artifact.name), ("kind", kind), ("size MB", weights_size(artifact) / 1e6),
               ("model", cfg.model or "embedded default"), ("adapter", cfg.adapter or "none")]
    if cfg.format == "gguf":
        from tuneforge.compress.quant.llamacpp_quantize import matrix_types, types_line

        summary.append(("matrices by GGUF type", types_line(matrix_types(artifact))))
    notes = []
    if manifest:
        summary += [("base GGUF", manifest["base"]), ("lora alpha", manifest["lora_alpha"]),
                    ("ranks", ", ".join(map(str, manifest["ranks"]))), ("adapted weights", manifest["weights"])]
        notes.append(f"Load: {manifest['load']}")
        if parity:
            notes.append(f"Parity: source = the merged GGUF of the same adapter at {cfg.gguf_type.upper()} (a temporary "
                         "file), export = the base GGUF + adapter.gguf, both through llama.cpp.")
    tables = []
    if parity:
        summary += [(f"golden prompts identical{ADAPTER_PARITY if cfg.format == 'gguf_adapter' else ''}", parity.exact_match_rate),
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
    for key, what in (("adapter_vs_pytorch", "base + adapter"), ("merged_gguf_vs_pytorch", "the merged GGUF")):
        if key in (against_pytorch or {}):
            summary.append((f"golden prompts identical, {what} vs the merged model in PyTorch",
                            against_pytorch[key]["exact_match_rate"]))
    notes = [f"problem: {p}" for p in problems] + file_notes + ([gguf_note] if gguf_note else []) + notes
    if cfg.format != "merged" and cfg.ollama:
        notes.append("Modelfile: `ollama create NAME -f Modelfile` in this folder (its TEMPLATE was checked against the chat template).")
    write_report(out, title=f"Export: {kind}", summary=summary, tables=tables, images=[], notes=notes)


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    export(config_from_args(ExportConfig, args))
    return 0
