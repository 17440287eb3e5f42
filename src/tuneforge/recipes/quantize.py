"""`tuneforge quantize CONFIG`: quantize a (fine-tuned) model and measure what it costs on the task.

    model (+ adapter, merged) ─► score "before" ─► quantize ─► save ─► reload / load in llama.cpp
        ─► score "after" ─► size on disk, decode tokens/s, [GGUF: parity on golden prompts]

Methods (`method`):
- int8_weight_only, int8_dynamic: torchao through transformers; model/ is a Hugging Face folder that
  `AutoModelForCausalLM.from_pretrained` reloads (the quantization settings live in its config.json).
- gguf_f16, gguf_q8_0, gguf_q4_0: one GGUF file for llama.cpp, scored through llama-cpp-python, and
  compared token by token with the float model on the golden prompts (tuneforge.export.parity).
- gguf_q4_k_m, gguf_q5_k_m, gguf_q6_k: llama.cpp's K-quant mixes, written by llama.cpp's own quantizer;
  gguf.imatrix_rows weights any quantized GGUF type by the task's activations (llama.cpp's imatrix).
- bnb_8bit, bnb_nf4: bitsandbytes on a CUDA GPU, or on CPU where bitsandbytes >= 0.48 runs them.

Writes runs/<name>/: config.yaml, model/ or model-<type>.gguf, metrics.json, predictions.jsonl,
parity.json (GGUF), report.md/html.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.compress.calibration import gguf_importance
from tuneforge.compress.sections import GGUFSection, ParitySection, SpeedSection, check_imatrix
from tuneforge.config import RunConfig
from tuneforge.fileio import write_json, write_jsonl
from tuneforge.runs import complete_run

GGUFMethod = Literal["gguf_f16", "gguf_q8_0", "gguf_q4_0", "gguf_q4_k_m", "gguf_q5_k_m", "gguf_q6_k"]
Method = Literal["int8_weight_only", "int8_dynamic", GGUFMethod, "bnb_8bit", "bnb_nf4"]


class QuantizeSpeedSection(SpeedSection):
    enabled: bool = Field(True, description="measure prefill and decode tokens/s of the float and quantized models")


class QuantizeConfig(RunConfig):
    method: Method = Field(
        "int8_weight_only", description="torchao int8 (CPU), GGUF for llama.cpp (K-quants by llama.cpp's quantizer), "
        "or bitsandbytes (CUDA; CPU with bitsandbytes >= 0.48)"
    )
    group_size: int | None = Field(None, ge=8, description="int8_weight_only: weights per scale along a row "
                                   "(e.g. 64; must divide the hidden sizes); null: one scale per row")
    eval_before: bool = Field(True, description="score the float model on the same rows (the 'before' column)")
    gguf: GGUFSection = Field(default_factory=GGUFSection)
    parity: ParitySection = Field(default_factory=ParitySection)
    speed: QuantizeSpeedSection = Field(default_factory=QuantizeSpeedSection)

    @model_validator(mode="after")
    def _group_size_is_weight_only(self):
        if self.group_size and self.method != "int8_weight_only":
            raise ValueError(f"group_size applies to method int8_weight_only only, not {self.method}: set group_size=null")
        return self

    @model_validator(mode="after")
    def _imatrix_is_for_quantized_gguf(self):
        qtype = self.method.removeprefix("gguf_") if self.method.startswith("gguf_") else None
        check_imatrix(self.gguf, qtype, self.data, f"method {self.method}")
        return self

    @model_validator(mode="after")
    def _zero_shot_only(self):
        if self.eval.strategy != "zero_shot":
            raise ValueError("eval.strategy: quantize scores zero-shot prompts only (llama.cpp has no few-shot/CoT path here)")
        return self


# -- steps ----------------------------------------------------------------------------------------------


def source_weights_bytes(model_name: str | None, model) -> int:
    """Bytes of the float checkpoint on disk; parameters × element size when it is not a local folder."""
    from tuneforge.compress.measure import weights_size
    from tuneforge.models import resolve_model

    folder = Path(resolve_model(model_name))
    if folder.is_dir():
        return weights_size(folder)
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def score_hf(model, tok, task, rows, cfg, label):
    from tuneforge.scoring import score_task

    t0 = time.perf_counter()
    metrics, predictions = score_task(model, tok, task, rows, strategy="zero_shot", batch_size=cfg.eval.batch_size,
                                      max_new_tokens=cfg.eval.max_new_tokens, desc=label)
    return {**metrics, "seconds": time.perf_counter() - t0}, predictions


def pre_tokenizer_for(cfg: QuantizeConfig) -> str | None:
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source
    from tuneforge.models import resolve_model

    return cfg.gguf.pre_tokenizer or pre_tokenizer_from_source(resolve_model(cfg.model))


def quantize_in_torch(cfg: QuantizeConfig, model, tok, run_dir: Path):
    """torchao or bitsandbytes: quantize from a float copy on disk, save model/, reload it from there."""
    from tuneforge.compress.quant import torchao
    from tuneforge.models import bnb
    from tuneforge.models.saving import save_model

    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".float-") as tmp:
        float_folder = save_model(model, tok, Path(tmp) / "float")
        if cfg.method in torchao.TORCHAO_METHODS:
            quantized = torchao.quantize_folder(float_folder, cfg.method, cfg.dtype, cfg.group_size)
        else:
            quantized = bnb.load_bnb(float_folder, cfg.method)
    save_model(quantized, tok, run_dir / "model")
    del quantized
    return torchao.load_quantized(run_dir / "model")  # what the user will load: proves the folder is complete


def quantize(cfg: QuantizeConfig) -> Path:
    from tuneforge.compress.measure import gguf_speed, hf_speed, speed_prompt_ids, weights_size
    from tuneforge.compress.quant.llamacpp import require_llama_cpp
    from tuneforge.export.parity import HFRunner, file_weights_parity, run_parity
    from tuneforge.models.loading import load_merged
    from tuneforge.runs import new_run_dir
    from tuneforge.tasks.splits import build_task, load_dev_rows

    is_gguf = cfg.method.startswith("gguf_")
    if cfg.method.startswith("bnb_"):
        from tuneforge.models.bnb import require_bnb

        require_bnb(cfg.method)  # before minutes of loading and scoring
    if is_gguf:
        require_llama_cpp(f"method {cfg.method}")  # it loads the file to score, compare and time it (and writes K-quants)
    task = build_task(cfg)
    rows = load_dev_rows(cfg, task)
    # GGUF is written from fp32 weights and compared with them; F16 rounding then matches llama.cpp's.
    model, tok = load_merged(cfg.model, cfg.adapter, "float32" if is_gguf else cfg.dtype)
    if cfg.method == "int8_weight_only":
        from tuneforge.compress.quant.torchao import check_group_size

        check_group_size(model, cfg.group_size)
    run_dir = new_run_dir(cfg)
    metrics: dict = {"method": cfg.method, "model": cfg.model, "adapter": cfg.adapter, "task": task.name,
                     "primary_metric": task.primary_metric, "rows": len(rows)}
    if rows and cfg.eval_before:
        metrics["before"], _ = score_hf(model, tok, task, rows, cfg, "float model")
    prompt = speed_prompt_ids(tok, cfg.speed.prompt_tokens)
    if cfg.speed.enabled:
        metrics["speed_before"] = hf_speed(model, prompt, cfg.speed.new_tokens, cfg.speed.repeats)
    metrics["size_before_bytes"] = source_weights_bytes(cfg.model, model)

    t0 = time.perf_counter()
    predictions: list[dict] = []
    if is_gguf:
        from tuneforge.compress.quant.llamacpp import LlamaCppRunner, score_with_runner
        from tuneforge.compress.quant.llamacpp_quantize import (
            k_quant_fallback_note,
            matrix_types,
            write_any_gguf,
        )

        qtype = cfg.method.removeprefix("gguf_")
        importance, metrics["imatrix_rows"] = gguf_importance(cfg, model, tok, task)
        artifact = write_any_gguf(model, tok, run_dir / f"model-{qtype}.gguf", qtype, pre_tokenizer=pre_tokenizer_for(cfg),
                                  importance=importance, threads=cfg.gguf.threads)
        metrics["quantize_seconds"] = time.perf_counter() - t0
        metrics["gguf_types"] = matrix_types(artifact)
        if note := k_quant_fallback_note(model, qtype):
            metrics["gguf_note"] = note
            print(f"note: {note}")
        runner = LlamaCppRunner(artifact, n_ctx=cfg.gguf.n_ctx, n_threads=cfg.gguf.threads)
        if cfg.parity.enabled:
            source = HFRunner(model, tok)
            parity = run_parity(source, runner, max_new_tokens=cfg.parity.max_new_tokens)
            metrics["parity"] = parity.summary()
            if cfg.parity.file_weights:
                metrics["parity_file_weights"] = file_weights_parity(source, artifact, tok, max_new_tokens=cfg.parity.max_new_tokens)
            write_json(run_dir / "parity.json", {**parity.summary(), "rows": parity.rows,
                                                 "file_weights": metrics.get("parity_file_weights")})
            for problem in parity.problems:
                print(f"warning: {problem}")
        if rows:
            t1 = time.perf_counter()
            metrics["after"], predictions = score_with_runner(runner, task, rows, max_new_tokens=cfg.eval.max_new_tokens,
                                                              desc="GGUF via llama.cpp")
            metrics["after"]["seconds"] = time.perf_counter() - t1
        if cfg.speed.enabled:
            metrics["speed_after"] = gguf_speed(runner.llm, prompt, cfg.speed.new_tokens, cfg.speed.repeats)
        metrics["size_after_bytes"] = artifact.stat().st_size
    else:
        quantized = quantize_in_torch(cfg, model, tok, run_dir)
        metrics["quantize_seconds"] = time.perf_counter() - t0
        del model
        if rows:
            metrics["after"], predictions = score_hf(quantized, tok, task, rows, cfg, f"{cfg.method} model")
        if cfg.speed.enabled:
            metrics["speed_after"] = hf_speed(quantized, prompt, cfg.speed.new_tokens, cfg.speed.repeats)
        metrics["size_after_bytes"] = weights_size(run_dir / "model")
        artifact = run_dir / "model"
    metrics["size_ratio"] = metrics["size_after_bytes"] / max(metrics["size_before_bytes"], 1)
    primary = task.primary_metric
    if "before" in metrics and "after" in metrics:
        metrics["delta"] = metrics["after"][primary] - metrics["before"][primary]
    if predictions:
        write_jsonl(run_dir / "predictions.jsonl", predictions)
    complete_run(run_dir, metrics)
    write_quantize_report(run_dir, metrics, primary)
    print_summary(metrics, primary, artifact)
    return run_dir


def print_summary(metrics: dict, primary: str, artifact: Path) -> None:
    parts = [f"{metrics['method']}: {metrics['size_after_bytes'] / 1e6:.1f} MB ({metrics['size_ratio']:.2f}× the float checkpoint)"]
    if "after" in metrics:
        parts.append(f"{primary} {metrics['after'][primary]:.4f}" + (f" ({metrics['delta']:+.4f})" if "delta" in metrics else ""))
    if "speed_after" in metrics and "speed_before" in metrics:
        parts.append(f"decode {metrics['speed_after']['decode_tok_s']:.1f} tok/s vs float {metrics['speed_before']['decode_tok_s']:.1f}")
    if "parity" in metrics:
        parts.append(f"golden prompts identical: {metrics['parity']['exact_match_rate']:.0%}")
    if "exact_match_rate" in metrics.get("parity_file_weights", {}):
        parts.append(f"with the file's weights in PyTorch: {metrics['parity_file_weights']['exact_match_rate']:.0%}")
    print("; ".join(parts))
    print(f"artifact: {artifact}")


def write_quantize_report(run_dir: Path, metrics: dict, primary: str) -> None:
    from tuneforge.export.parity import file_parity_report
    from tuneforge.report import write_report

    rows = []
    for arm, speed, size in (("float", "speed_before", "size_before_bytes"), (metrics["method"], "speed_after", "size_after_bytes")):
        key = "before" if arm == "float" else "after"
        rows.append({"model": arm, primary: metrics.get(key, {}).get(primary), "size MB": metrics[size] / 1e6,
                     **{k: v for k, v in metrics.get(speed, {}).items()}})
    summary = [("method", metrics["method"]), ("rows scored", metrics["rows"]), ("size ratio", metrics["size_ratio"])]
    if "delta" in metrics:
        summary.append((f"{primary} change", metrics["delta"]))
    tables = [("Float vs quantized", rows)]
    if "parity" in metrics:
        summary.append(("golden prompts identical", metrics["parity"]["exact_match_rate"]))
        summary.append(("token agreement", metrics["parity"]["token_agreement"]))
    file_rows, file_notes = file_parity_report(metrics.get("parity_file_weights"))
    summary += file_rows
    notes = list(metrics.get("parity", {}).get("problems", [])) + file_notes
    if "gguf_types" in metrics:
        from tuneforge.compress.quant.llamacpp_quantize import types_line

        summary.append(("matrices by GGUF type", types_line(metrics["gguf_types"])))
        summary.append(("imatrix rows", metrics["imatrix_rows"] or "none (unweighted)"))
        notes += [metrics["gguf_note"]] if "gguf_note" in metrics else []
        notes.append("The GGUF is scored through llama.cpp (llama-cpp-python), one row at a time, greedy.")
    write_report(run_dir, title=f"Quantization: {metrics['method']}", summary=summary, tables=tables, images=[], notes=notes)


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    quantize(config_from_args(QuantizeConfig, args))
    return 0
