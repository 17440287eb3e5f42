"""Task-specific data layouts on top of `read_rows`: SQuAD, DialogSum, VietNews, parallel text, chat formats.

Each `*_rows` function turns rows as `read_rows` returns them (keys verbatim from the file, plus `_line`)
into the fields a task pack uses; task packs call them from `prepare`, so a config only needs a DataSpec.
Each `read_*` function is the same thing for a path, for scripts and tests.
"""

from __future__ import annotations

import random
import re

from tuneforge.config.data import DataSpec
from tuneforge.data.readers import read_rows
from tuneforge.errors import UserError

# -- SQuAD v1.1 ------------------------------------------------------------------------------------------


def is_squad_article(row: dict) -> bool:
    return isinstance(row.get("paragraphs"), list)


def squad_rows(articles: list[dict], source: str) -> list[dict]:
    """SQuAD articles ({title, paragraphs: [{context, qas}]}) → one row per question.

    `article` is the article's index in the file (0-based, from `_line`), so splits stay by article.
    """
    rows = []
    for i, art in enumerate(articles):
        index = int(art.get("_line", i + 1)) - 1
        where = f"{source}: article {index + 1}"
        if not is_squad_article(art):
            raise UserError(f"{where}: no 'paragraphs' list; is this SQuAD v1.1 JSON read with records_key: data?")
        for p, para in enumerate(art["paragraphs"]):
            context = para.get("context")
            if not isinstance(context, str) or not isinstance(para.get("qas"), list):
                raise UserError(f"{where}, paragraph {p + 1}: needs 'context' (text) and 'qas' (list)")
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", []) if isinstance(a, dict) and a.get("text")]
                if not answers:
                    raise UserError(
                        f"{where}, question {qa.get('id')}: no answers; SQuAD v2 unanswerable questions are "
                        "not supported, drop them or use SQuAD v1.1"
                    )
                rows.append({
                    "id": qa.get("id"), "title": art.get("title", ""), "article": index, "paragraph": p,
                    "context": context, "question": qa["question"], "answers": answers,
                    "_line": f"article {index + 1}, question {qa.get('id')}",
                })
    return rows


def read_squad(path: str, first_article: int = 0, n_articles: int | None = None) -> list[dict]:
    """Questions of articles [first_article, first_article + n_articles) in file order (0-based)."""
    spec = DataSpec(path=path, format="json", records_key="data", start=first_article, limit=n_articles)
    return squad_rows(read_rows(spec), path)


# -- summarization ----------------------------------------------------------------------------------------

_SOURCE_KEYS = ("dialogue", "article", "source", "text", "document")
_TARGET_KEYS = ("summary", "abstract", "target", "highlights")


def desegment(text: str) -> str:
    """VietNews is word-segmented (syllables of a word joined by '_'): join them with spaces again."""
    return re.sub(r"(?<=\w)_(?=\w)", " ", text)


def summary_row(row: dict, where: str, desegment_text: bool | None = None) -> dict:
    """DialogSum (dialogue + summary or summary1..3), VietNews (article + abstract) or source/target rows.

    → {source, references: [str, ...], kind: "dialogue" | "article" | "text", ...}. `desegment_text`
    None means: only for VietNews rows (they are the word-segmented ones).
    """
    src_key = next((k for k in _SOURCE_KEYS if isinstance(row.get(k), str)), None)
    if src_key is None:
        raise UserError(
            f"{where}: no source text; expected one of the keys {', '.join(_SOURCE_KEYS)} "
            "(or map yours with data.*.columns: {source: your_column})"
        )
    refs = [row[k] for k in _TARGET_KEYS if isinstance(row.get(k), str)]
    numbered = sorted((k for k in row if re.fullmatch(r"summary\d+", k)), key=lambda k: int(k[7:]))
    refs += [row[k] for k in numbered if isinstance(row[k], str)]
    if isinstance(row.get("references"), list):
        refs += [str(r) for r in row["references"]]
    refs = [r.strip() for r in refs if r.strip()]
    if not refs:
        raise UserError(
            f"{where}: no reference summary; expected one of {', '.join(_TARGET_KEYS)}, summary1..N or references"
        )
    vietnews = src_key == "article" and "abstract" in row
    if desegment_text if desegment_text is not None else vietnews:
        refs = [desegment(r) for r in refs]
        source = desegment(row[src_key])
    else:
        source = row[src_key]
    kind = {"dialogue": "dialogue", "article": "article"}.get(src_key, "text")
    return {**row, "source": source.strip(), "references": refs, "kind": kind}


# -- parallel text -------------------------------------------------------------------------------------------


def parse_direction(direction: str) -> tuple[str, str]:
    parts = re.split(r"\s*(?:->|→|-)\s*", direction.strip())
    if len(parts) != 2 or not all(parts):
        raise UserError(f"task.direction '{direction}' is not like 'en-vi' (source language, dash, target language)")
    return parts[0].lower(), parts[1].lower()


def parallel_row(row: dict, src: str, tgt: str, where: str) -> dict:
    """A row with language-code columns (en, vi, ...) or source/target → {source, target}."""
    if src in row and tgt in row:
        source, target = row[src], row[tgt]
    elif "source" in row and "target" in row:
        source, target = row["source"], row["target"]
    else:
        keys = [k for k in row if not k.startswith("_")]
        raise UserError(
            f"{where}: no '{src}' and '{tgt}' columns for direction {src}-{tgt} (columns: {keys}); "
            "name them in data.*.columns or data.*.files, or fix task.direction"
        )
    source, target = str(source).strip(), str(target).strip()
    if not source or not target:
        raise UserError(f"{where}: empty {'source' if not source else 'target'} sentence; remove the line")
    return {**row, "source": source, "target": target}


def read_parallel(path: str, direction: str, files: dict[str, str] | None = None, **spec) -> list[dict]:
    """A TSV with language-code columns, or (with `files`) a folder of line-aligned files, e.g. {en: x.en}."""
    src, tgt = parse_direction(direction)
    data = DataSpec(path=path, format="lines" if files else "auto", files=files or {}, **spec)
    return [parallel_row(r, src, tgt, f"{path}:{r['_line']}") for r in read_rows(data)]


# -- chat -----------------------------------------------------------------------------------------------------

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "chatgpt": "assistant", "model": "assistant", "system": "system"}


def chat_messages(row: dict, where: str) -> list[dict]:
    """Alpaca (+ LIMA `history`, `system`), ShareGPT `conversations` or OpenAI `messages` → messages.

    The result alternates user/assistant after an optional system message and ends with an assistant turn.
    """
    if isinstance(row.get("messages"), list):
        msgs = [_message(m, "role", "content", where, i) for i, m in enumerate(row["messages"])]
    elif isinstance(row.get("conversations"), list):
        msgs = [_message(m, "from", "value", where, i) for i, m in enumerate(row["conversations"])]
    elif "instruction" in row and "output" in row:
        msgs = []
        for turn in row.get("history") or []:
            if not (isinstance(turn, list | tuple) and len(turn) == 2):
                raise UserError(f"{where}: each 'history' item must be a [user, assistant] pair")
            msgs += [{"role": "user", "content": str(turn[0])}, {"role": "assistant", "content": str(turn[1])}]
        prompt = str(row["instruction"]).strip()
        if str(row.get("input") or "").strip():
            prompt += "\n\n" + str(row["input"]).strip()
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]
    else:
        raise UserError(
            f"{where}: not a chat row; expected 'messages' (OpenAI), 'conversations' (ShareGPT) or "
            f"'instruction' + 'output' (Alpaca); its keys: {[k for k in row if not k.startswith('_')]}"
        )
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system.strip()})
    return check_turns(msgs, where)


def _message(m, role_key: str, text_key: str, where: str, i: int) -> dict:
    if not isinstance(m, dict) or role_key not in m or text_key not in m:
        raise UserError(f"{where}: message {i + 1} needs '{role_key}' and '{text_key}'")
    role = _ROLES.get(str(m[role_key]).lower())
    if role is None:
        raise UserError(f"{where}: message {i + 1} has unknown {role_key} '{m[role_key]}'; use one of {sorted(_ROLES)}")
    return {"role": role, "content": str(m[text_key] or "")}


def check_turns(msgs: list[dict], where: str) -> list[dict]:
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if any(m["role"] == "system" for m in body):
        raise UserError(f"{where}: a system message may only come first")
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or [m["role"] for m in body] != expected[: len(body)] or body[-1]["role"] != "assistant":
        raise UserError(
            f"{where}: turns must alternate user, assistant, ... and end with the assistant; found "
            f"{[m['role'] for m in body]}"
        )
    if not body[-1]["content"].strip():
        raise UserError(f"{where}: the last assistant turn is empty")
    return msgs


def read_chat(path: str, **spec) -> list[dict]:
    data = DataSpec(path=path, **spec)
    return [{**r, "messages": chat_messages(r, f"{path}:{r['_line']}")} for r in read_rows(data)]


def read_chat_mix(spec: DataSpec) -> list[dict]:
    """Several chat files (`spec.files`: name -> file inside `spec.path`) as one split.

    Rows of all files are shuffled with `spec.seed`; `start` and `limit` then count rows of the shuffled
    mix, so two specs with the same files and seed, one {limit: 50} and one {start: 50}, never overlap.
    Each row keeps `_source` (the name in `files`) and `_line` (its record number in that file).
    """
    from pathlib import Path

    rows = []
    for name, file in spec.files.items():
        one = DataSpec(path=str(Path(spec.path) / file), format="auto" if spec.format == "lines" else spec.format)
        rows += [{**r, "_source": name, "_line": f"{file}:{r['_line']}"} for r in read_rows(one)]
    random.Random(spec.seed).shuffle(rows)
    kept = rows[spec.start:][: spec.limit]
    if not kept:
        raise UserError(f"{spec.path}: the chat mix has {len(rows)} rows; start={spec.start} leaves none")
    return kept


def read_mt_bench(path: str, turn: int = 1) -> list[dict]:
    """MT-Bench question.jsonl → rows {question_id, category, messages: [user turn `turn`]}."""
    rows = []
    for r in read_rows(DataSpec(path=path, format="jsonl")):
        turns = r.get("turns")
        if not isinstance(turns, list) or len(turns) < turn:
            raise UserError(f"{path}:{r['_line']}: needs a 'turns' list with at least {turn} question(s)")
        rows.append({"question_id": r.get("question_id"), "category": r.get("category"),
                     "messages": [{"role": "user", "content": str(turns[turn - 1])}], "_line": r["_line"]})
    return rows
