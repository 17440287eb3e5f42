"""Config sections that several compression verbs share (distillation loss, speed, GGUF, parity)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneforge.config import Section


class KDSection(Section):
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="divergence between teacher and student token distributions")
    temperature: float = Field(1.0, gt=0, description="softens both distributions; the loss is scaled by T²")
    beta: float = Field(0.5, ge=0, le=1, description="loss=jsd: mixture weight of the teacher (0 → forward KL, 1 → reverse KL)")
    ratio: float = Field(0.5, ge=0, le=1, description="loss = ratio·KD + (1 − ratio)·cross-entropy on the targets")
    tokens: Literal["targets", "text", "all"] = Field("targets", description="KD on the answer tokens only; on every token after the prompt prefix a batch's rows share (each row's own text and answer; the prefix runs once per batch); or on every token (the prompt too). CE stays on the answer")
    chunk_tokens: int = Field(256, ge=1, description="target tokens whose full-vocabulary logits are formed at once")
    sequence_level: bool = Field(False, description="train on the teacher's generated answers instead of the gold ones")
    generate_batch_size: int = Field(16, ge=1, description="sequence_level: prompts per teacher generation batch")


class SpeedSection(Section):
    prompt_tokens: int = Field(128, ge=1, description="prompt length for the prefill measurement")
    new_tokens: int = Field(64, ge=2, description="greedy tokens for the decode measurement")
    repeats: int = Field(2, ge=1, description="timed runs; the fastest is kept")


class GGUFSection(Section):
    pre_tokenizer: str | None = Field(None, description="llama.cpp pre-tokenizer name (tokenizer.ggml.pre); null: from the embedded model's GGUF or detected from tokenizer.json")
    n_ctx: int = Field(2048, ge=64, description="context window llama.cpp allocates when the file is scored")
    threads: int | None = Field(None, ge=1, description="llama.cpp threads; null: all cores")
    imatrix_rows: int = Field(0, ge=0, description="training rows (data.train) whose activations weight llama.cpp's "
                              "quantization of the block matrices (its imatrix; Q4_0 and K-quants); 0: unweighted")
    imatrix_max_len: int = Field(256, ge=8, description="tokens per calibration row for the imatrix")


class ParitySection(Section):
    enabled: bool = Field(True, description="compare greedy tokens of source and artifact on the golden prompts")
    max_new_tokens: int = Field(32, ge=1, description="greedy tokens per golden prompt")
    file_weights: bool = Field(True, description="GGUF: also answer them with the file's own weights read back by "
                               "transformers and run in PyTorch, which separates what the stored weights change from "
                               "what llama.cpp's arithmetic changes")


def check_imatrix(gguf: GGUFSection, qtype: str | None, data, what: str) -> None:
    """imatrix_rows only for a GGUF type llama.cpp weights, and with training rows to take it from."""
    from tuneforge.compress.quant.llamacpp_quantize import WEIGHTABLE

    if not gguf.imatrix_rows:
        return
    if qtype not in WEIGHTABLE:
        raise ValueError(f"gguf.imatrix_rows weights GGUF types {', '.join(WEIGHTABLE)} only (llama.cpp's Q8_0 encoder "
                         f"ignores an imatrix), not {what}: set gguf.imatrix_rows=0")
    if data.train is None:
        raise ValueError("gguf.imatrix_rows needs data.train: the task's training split, whose rows the imatrix is taken on")
