"""Run a GGUF file through llama.cpp (llama-cpp-python): greedy tokens for parity, and task scoring.

The prompt is rendered with the chat template stored *in the GGUF* by llama-cpp-python's own Jinja
formatter and tokenized by llama.cpp, exactly as a llama.cpp chat would do it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm import tqdm

from tuneforge.errors import UserError

INSTALL = "pip install 'tuneforge[llamacpp]' (compiles llama.cpp, ~7 min on 2 cores)"


def require_llama_cpp(what: str) -> None:
    """Refuse up front, before minutes of loading and scoring, when llama-cpp-python is not installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError(f"{what} needs llama-cpp-python: {INSTALL}")


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise UserError(f"running a GGUF needs llama-cpp-python: {INSTALL}") from e
    return llama_cpp


def has_gguf_magic(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_error(path: str | Path, error: Exception) -> UserError:
    """llama-cpp-python says only "Failed to load model from file"; say whether the file is a GGUF at all."""
    why = f"llama.cpp refused it ({error})" if has_gguf_magic(path) else "it is not a GGUF file (no GGUF magic)"
    return UserError(f"GGUF file {path} could not be loaded: {why}; write it again with `tuneforge export`")


def lora_error(adapter: str | Path, base: str | Path) -> UserError:
    """llama.cpp refused a LoRA adapter file (its own log says why)."""
    return UserError(f"llama.cpp could not apply the LoRA adapter {adapter} to {base}: is it a GGUF LoRA adapter of "
                     "this base model? (`tuneforge export` format gguf_adapter writes one)")


class LlamaCppRunner:
    """A GGUF model with the runner interface of tuneforge.export.parity (prompt_ids, greedy, stop_ids, decode);
    `lora_path`: a GGUF LoRA adapter applied to it (scale 1)."""

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                 lora_path: str | Path | None = None):
        llama_cpp = import_llama_cpp()
        path = Path(path)
        for file in (path, lora_path):
            if file is not None and not Path(file).is_file():
                raise UserError(f"GGUF file {file} not found")
        self.path, self.lora_path = path, lora_path
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), n_batch=512, verbose=False,
                lora_path=str(lora_path) if lora_path else None,
            )
        except ValueError as e:
            raise load_error(path, e) from e
        except RuntimeError as e:  # llama-cpp-python's words for a LoRA llama.cpp refused (the reason is in its log)
            raise self.lora_error() from e
        # llama-cpp-python 0.3 tests the adapter llama.cpp returns with `is None`, which a NULL ctypes pointer is not:
        # a refused adapter (wrong shapes, wrong architecture) would be dropped without a word.
        if lora_path and not getattr(self.llm, "_lora_adapter", True):
            raise self.lora_error()
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        eot = meta.get("tokenizer.ggml.eot_token_id")
        self._stops = {self.llm.token_eos()} | ({int(eot)} if eot is not None else set())
        self.last_decode_s = 0.0

    def lora_error(self) -> UserError:
        return lora_error(self.lora_path, self.path)

    def token_text(self, tid: int) -> str:
        return self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.template:
            raise UserError(f"{self.path} has no tokenizer.chat_template: re-export it from a model with a chat template")
        formatter = Jinja2ChatFormatter(
            template=self.template,
            eos_token=self.token_text(self.llm.token_eos()),
            bos_token=self.token_text(self.llm.token_bos()),
            add_generation_prompt=True,
        )
        text = formatter(messages=messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    def stop_ids(self) -> set[int]:
        return set(self._stops)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids=frozenset()) -> list[int]:
        out: list[int] = []
        t_first = None
        for tid in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if t_first is None:
                t_first = time.perf_counter()
            out.append(int(tid))
            if tid in stop_ids or len(out) >= max_new_tokens:
                break
        self.last_decode_s = time.perf_counter() - (t_first or time.perf_counter())
        return out


def score_with_runner(runner, task, rows: list[dict], *, max_new_tokens: int | None = None, desc: str = "scoring") -> tuple[dict, list[dict]]:
    """The task's metrics for a non-transformers model (zero-shot prompts, greedy, one row at a time)."""
    budget = max_new_tokens or task.max_new_tokens
    stops = runner.stop_ids()
    preds, refs, predictions = [], [], []
    for row in tqdm(rows, desc=desc, unit="ex"):
        messages = task.prompt(row)
        text = runner.decode(runner.greedy(runner.prompt_ids(messages), budget, stops)).strip()
        pred, ref = task.parse(text), task.reference(row)
        preds.append(pred)
        refs.append(ref)
        predictions.append({"prompt": messages[-1]["content"], "output": text, "prediction": pred, "reference": ref})
    return task.score(preds, refs), predictions
