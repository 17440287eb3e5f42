"""Parity between a model and its export: golden chat prompts, greedy tokens compared, template and stop checks.

A runner is anything with `prompt_ids(messages) -> list[int]`, `greedy(ids, max_new_tokens, stop_ids) ->
list[int]`, `stop_ids() -> set[int]` and `decode(ids) -> str`: `HFRunner` wraps a transformers model,
`tuneforge.compress.quant.llamacpp.LlamaCppRunner` a GGUF file. Each side renders prompts with its *own* chat
template and tokenizer, so a template or tokenizer that drifted during export shows up as different
prompt tokens, not only as different answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

GOLDEN_PROMPTS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me two tips for staying healthy."}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "What is 12 plus 30?"}],
    [{"role": "user", "content": "Thủ đô của Việt Nam là gì? Trả lời bằng tiếng Việt."}],
    [
        {"role": "user", "content": "Name a colour of the sky."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And at sunset?"},
    ],
]


# -- the transformers side --------------------------------------------------------------------------------


class HFRunner:
    """Greedy decoding with a KV cache, written out so that the decode phase can be timed on its own."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.last_decode_s = 0.0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def stop_ids(self) -> set[int]:
        return stop_ids_of(self.tok, getattr(self.model, "generation_config", None))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def next_logits(self, ids: list[int]):
        """Logits of the token after `ids` (one forward pass, float32)."""
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            return self.model(torch.tensor([ids], device=device)).logits[0, -1].float().cpu()

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids=frozenset()) -> list[int]:
        import torch

        device = next(self.model.parameters()).device
        out: list[int] = []
        with torch.inference_mode():
            step = self.model(torch.tensor([ids], device=device), use_cache=True)
            t_first = time.perf_counter()
            while True:
                nxt = int(step.logits[0, -1].argmax())
                out.append(nxt)
                if nxt in stop_ids or len(out) >= max_new_tokens:
                    break
                step = self.model(torch.tensor([[nxt]], device=device), cache=step.cache, use_cache=True)
        self.last_decode_s = time.perf_counter() - t_first
        return out


class CachedRunner:
    """A runner whose greedy answers are computed once per (prompt, budget, stops): one model compared with several."""

    def __init__(self, runner):
        self.runner, self.cache = runner, {}

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids=frozenset()) -> list[int]:
        key = (tuple(ids), max_new_tokens, frozenset(stop_ids))
        if key not in self.cache:
            self.cache[key] = self.runner.greedy(ids, max_new_tokens, stop_ids)
        return list(self.cache[key])


def stop_ids_of(tok, generation_config=None) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's eos plus generation_config.eos_token_id."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids |= set(gen_eos) if isinstance(gen_eos, list | tuple) else ({gen_eos} if gen_eos is not None else set())
    return ids


# -- comparison -------------------------------------------------------------------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


TIE_MARGIN = 0.1  # logits: a lower-precision export may flip a greedy choice the source itself made by less


@dataclass
class ParityResult:
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # template / stop-token mismatches: these fail an export
    tie_margin: float = TIE_MARGIN

    @property
    def equivalent_rate(self) -> float:
        """Share of answers identical, or first differing where the source's own logit gap was under tie_margin."""
        ok = [r["tokens_equal"] or (r.get("source_gap") is not None and r["source_gap"] < self.tie_margin)
              for r in self.rows]
        return sum(ok) / max(len(ok), 1)

    @property
    def exact_match_rate(self) -> float:
        return sum(r["tokens_equal"] for r in self.rows) / max(len(self.rows), 1)

    @property
    def token_agreement(self) -> float:
        """Mean share of each answer that agrees before the first differing token."""
        return sum(r["agreement"] for r in self.rows) / max(len(self.rows), 1)

    @property
    def prompt_match_rate(self) -> float:
        return sum(r["prompt_tokens_equal"] for r in self.rows) / max(len(self.rows), 1)

    def summary(self) -> dict:
        return {
            "prompts": len(self.rows),
            "exact_match_rate": round(self.exact_match_rate, 4),
            "token_agreement": round(self.token_agreement, 4),
            "prompt_match_rate": round(self.prompt_match_rate, 4),
            "equivalent_rate": round(self.equivalent_rate, 4),
            "tie_margin": self.tie_margin,
            "problems": list(self.problems),
        }

    def markdown(self, title: str = "Parity") -> str:
        s = self.summary()
        lines = [
            f"## {title}",
            "",
            f"Greedy answers identical on {sum(r['tokens_equal'] for r in self.rows)}/{s['prompts']} golden prompts "
            f"(token agreement {s['token_agreement']:.3f}); prompt tokens identical on {s['prompt_match_rate']:.0%}. "
            f"Identical or first differing at a near-tie (the source's own logit gap between the two tokens under "
            f"{self.tie_margin:g}): {s['equivalent_rate']:.0%}.",
            "",
        ]
        lines += [f"- **problem**: {p}" for p in self.problems] + ([""] if self.problems else [])
        lines += ["| prompt | same prompt tokens | same answer | first difference | source logit gap there | source | export |",
                  "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            gap = r.get("source_gap")
            cells = [r["prompt"], r["prompt_tokens_equal"], r["tokens_equal"], r["first_difference"],
                     "" if gap is None else f"{gap:.4f}", r["source_text"], r["export_text"]]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def check_stops(source, export) -> list[str]:
    """Both sides must stop on the same end-of-turn token, or the export's chat runs on (or stops early)."""
    src, exp = source.stop_ids(), export.stop_ids()
    if not src & exp:
        return [
            f"stop tokens differ: the source ends a turn on token ids {sorted(src)}, the export on {sorted(exp)}; "
            "set the tokenizer's eos_token and generation_config.eos_token_id to the end-of-turn token before exporting"
        ]
    return []


def run_parity(source, export, prompts: list[list[dict]] | None = None, *, max_new_tokens: int = 32, desc: str = "parity") -> ParityResult:
    """Greedy answers of `source` and `export` on the golden prompts, compared token by token."""
    prompts = prompts or GOLDEN_PROMPTS
    result = ParityResult(problems=check_stops(source, export))
    stops_src, stops_exp = source.stop_ids(), export.stop_ids()
    for messages in tqdm(prompts, desc=desc, unit="prompt"):
        ids_src, ids_exp = source.prompt_ids(messages), export.prompt_ids(messages)
        # Both answer the *source's* prompt tokens, so that the answer comparison isolates the weights.
        out_src = source.greedy(ids_src, max_new_tokens, stops_src)
        out_exp = export.greedy(ids_src, max_new_tokens, stops_exp)
        n = common_prefix(out_src, out_exp)
        gap = None
        if out_src != out_exp and n < min(len(out_src), len(out_exp)) and hasattr(source, "next_logits"):
            logits = source.next_logits(ids_src + out_src[:n])
            gap = float(logits[out_src[n]] - logits[out_exp[n]])
        result.rows.append(
            {
                "prompt": messages[-1]["content"],
                "prompt_tokens_equal": ids_src == ids_exp,
                "tokens_equal": out_src == out_exp,
                "first_difference": None if out_src == out_exp else n,
                "agreement": n / max(len(out_src), len(out_exp), 1),
                "source_gap": gap,  # how much the source preferred its own token where the two first differ
                "source_tokens": out_src,
                "export_tokens": out_exp,
                "source_text": source.decode(out_src),
                "export_text": export.decode(out_exp),
            }
        )
        if ids_src != ids_exp:
            k = common_prefix(ids_src, ids_exp)
            result.problems.append(
                f"chat template or tokenizer differs: prompt {len(result.rows)} ({messages[-1]['content'][:40]!r}) renders to "
                f"different tokens from position {k}: source {source.decode(ids_src[k:k + 8])!r} vs export {export.decode(ids_exp[k:k + 8])!r}"
            )
    return result


def decode_tokens_per_s(runner, messages: list[dict] | None = None, new_tokens: int = 64) -> float:
    """Decode speed of one stream (prefill excluded), generating exactly `new_tokens` tokens."""
    ids = runner.prompt_ids(messages or GOLDEN_PROMPTS[1])
    runner.greedy(ids, 8, frozenset())  # warm-up
    runner.greedy(ids, new_tokens, frozenset())
    return (new_tokens - 1) / max(runner.last_decode_s, 1e-9)


# -- chat format: the template as prefix/suffix strings, for Ollama ----------------------------------------


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to literal pieces: what Ollama's Go TEMPLATE can express."""

    prefix: str
    system_start: str
    system_end: str
    user_start: str
    user_end: str
    assistant_start: str  # the generation prompt
    assistant_end: str
    default_system: str | None = None

    def render(self, messages: list[dict]) -> str:
        """Same semantics as the generated Go template (see recipes/export.py: modelfile_text)."""
        system = next((m["content"] for m in messages if m["role"] == "system"), self.default_system)
        out = self.prefix
        if system:
            out += self.system_start + system + self.system_end
        for m in messages:
            if m["role"] == "user":
                out += self.user_start + m["content"] + self.user_end + self.assistant_start
            elif m["role"] == "assistant":
                out += m["content"] + self.assistant_end
        return out


class ChatFormatError(ValueError):
    pass


def _between(text: str, left: str, right: str) -> str:
    i = text.index(left) + len(left)
    return text[i:text.index(right, i)]


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def chat_format(tok) -> ChatFormat:
    """Probe the tokenizer's chat template with marker messages and cut it into literal pieces."""
    S, U, A, U2 = "\u2e3aSYS\u2e3a", "\u2e3aUSR\u2e3a", "\u2e3aAST\u2e3a", "\u2e3aUSR2\u2e3a"

    def render(msgs, gen):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    try:
        user_only = render([{"role": "user", "content": U}], False)
        user_gen = render([{"role": "user", "content": U}], True)
        full = render(
            [{"role": "system", "content": S}, {"role": "user", "content": U}, {"role": "assistant", "content": A}, {"role": "user", "content": U2}],
            False,
        )
    except Exception as e:  # templates raise on roles they do not support (e.g. no system turn)
        raise ChatFormatError(f"the chat template cannot render a system/user/assistant conversation: {e}") from None
    try:
        if not user_gen.startswith(user_only):
            raise ChatFormatError("the generation prompt is not a suffix of the rendered conversation")
        assistant_start = user_gen[len(user_only):]
        before_u = user_only[: user_only.index(U)]
        user_end = user_only[user_only.index(U) + len(U):]
        if _between(full, U, A) != user_end + assistant_start:
            raise ChatFormatError("an assistant turn is not introduced by the generation prompt")
        after_a = _between(full, A, U2)  # assistant_end + user_start
        cuts = [c for c in range(len(after_a) + 1) if before_u.endswith(after_a[c:])]
        # Ambiguous when a default system turn ends like an assistant turn; templates close every turn alike.
        cut = len(user_end) if len(user_end) in cuts and after_a[: len(user_end)] == user_end else cuts[0]
        assistant_end, user_start = after_a[:cut], after_a[cut:]
        head = full[: full.index(S)]  # prefix + system_start
        sys_tail = _between(full, S, U)  # system_end + user_start
        if not sys_tail.endswith(user_start):
            raise ChatFormatError("the system turn is not followed by the user turn")
        system_end = sys_tail[: len(sys_tail) - len(user_start)]
        user_head = before_u[: len(before_u) - len(user_start)]  # prefix [+ default system turn]
        if len(user_head) > len(head) and user_head.startswith(head) and user_head.endswith(system_end):
            default = user_head[len(head): len(user_head) - len(system_end)]
            return ChatFormat("", head, system_end, user_start, user_end, assistant_start, assistant_end, default)
        if not head.startswith(user_head):
            raise ChatFormatError("the text before the system turn does not match the text before a user turn")
        return ChatFormat(user_head, head[len(user_head):], system_end, user_start, user_end, assistant_start, assistant_end)
    except (ValueError, IndexError) as e:  # a marker the template dropped or reordered
        raise ChatFormatError(str(e) or "marker messages did not survive the template") from None


def check_chat_format(tok, fmt: ChatFormat, prompts: list[list[dict]] | None = None) -> list[str]:
    """The literal pieces must reproduce the real template on the golden prompts; returns problems."""
    problems = []
    for messages in prompts or GOLDEN_PROMPTS:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = fmt.render(messages)
        if got != want:
            k = first_difference(want, got)
            problems.append(
                f"the Ollama TEMPLATE renders {messages[-1]['content'][:30]!r} differently from the chat template "
                f"at character {k}: {want[k:k + 30]!r} (template) vs {got[k:k + 30]!r} (Ollama)"
            )
    return problems


# -- a GGUF's own weights, run in PyTorch -----------------------------------------------------------------


def gguf_weights_runner(path: str | Path, tok) -> HFRunner:
    """The GGUF's stored weights, dequantized by transformers' own GGUF reader, run in PyTorch (fp32).

    Against the float model this shows what the stored weights change; against llama.cpp's answers, what
    llama.cpp's arithmetic changes (on CPU it rounds activations to 8 bits inside Q8_0 and K-quant matmuls).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return HFRunner(model, tok)


def file_weights_parity(source, path: str | Path, tok, *, max_new_tokens: int) -> dict:
    """Golden-prompt parity of `source` with the GGUF's own weights in PyTorch; {"error": ...} if unreadable."""
    try:
        runner = gguf_weights_runner(path, tok)
    except Exception as e:  # a diagnostic beside the llama.cpp parity: a reader gap must not fail the run
        return {"error": f"transformers could not read {Path(path).name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
    result = run_parity(source, runner, max_new_tokens=max_new_tokens, desc="parity: the file's weights in PyTorch")
    return {**result.summary(), "first_differences": [r["first_difference"] for r in result.rows]}


def file_parity_report(file_parity: dict | None) -> tuple[list[tuple], list[str]]:
    """(summary rows, notes) for a report from file_weights_parity's result (None: not run)."""
    if not file_parity:
        return [], []
    if "error" in file_parity:
        return [], [file_parity["error"]]
    return [("golden prompts identical, the file's weights in PyTorch", file_parity["exact_match_rate"])], []

