"""Structured output (response_format json_schema) through `tuneforge serve` with the official openai client.

    nice .venv/bin/python benchmarks/structured_output.py                          # both engines, 50 requests each
    nice .venv/bin/python benchmarks/structured_output.py --engines llamacpp --requests 20
    nice .venv/bin/python benchmarks/structured_output.py --engines vllm                    # needs make vllm-env

For each engine a real server process serves the embedded model (SmolLM2-135M-Instruct; the llamacpp engine its
Q4_1 GGUF) on a free loopback port. --requests chat requests cycle through ten schemas (objects with required
string, integer, number, boolean, enum, date, array and nested-object fields), greedy and sampled (temperature
0.7, a seed each), sent by --clients threads at once. An answer is valid when it parses as JSON and validates
against its schema (jsonschema). Printed per engine: valid / sent, finish reasons, wall time, latency p50/p90
and completion tokens/s. Target (issue 25): 100% valid on 50 requests per engine.

Strings, numbers and arrays in the schemas are bounded: with a 135M model an unbounded one can repeat until
max_tokens cuts the JSON off (finish_reason "length", counted invalid), which tests the model, not the decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import jsonschema
import openai
from serve_load import start_server

TEXT = {"type": "string", "maxLength": 40}


def obj(**fields) -> dict:
    return {"type": "object", "properties": fields, "required": list(fields), "additionalProperties": False}


CASES = [
    (obj(name=TEXT, age={"type": "integer", "minimum": 0, "maximum": 120}, color={"enum": ["red", "green", "blue"]},
         hobbies={"type": "array", "items": TEXT, "maxItems": 3}),
     "Invent a person: their name, age, favourite colour and hobbies."),
    (obj(city=TEXT, country=TEXT, population={"type": "integer", "minimum": 0, "maximum": 50_000_000}),
     "Tell me about the capital of Vietnam."),
    (obj(sentiment={"enum": ["positive", "negative", "neutral"]}, score={"type": "integer", "minimum": 1, "maximum": 5},
         keywords={"type": "array", "items": TEXT, "maxItems": 4}),
     "Review: 'The phone is fast and the battery lasts two days.' Rate it."),
    (obj(title={"type": "string", "maxLength": 60}, year={"type": "integer", "minimum": 1000, "maximum": 2100},
         in_print={"type": "boolean"}, authors={"type": "array", "items": obj(name=TEXT), "minItems": 1, "maxItems": 2}),
     "Describe a famous novel."),
    (obj(product=TEXT, price={"type": "number", "minimum": 0, "maximum": 10_000},
         currency={"enum": ["USD", "EUR", "VND"]}, in_stock={"type": "boolean"}),
     "A laptop is for sale. Give its listing."),
    (obj(event={"type": "string", "maxLength": 60}, date={"type": "string", "format": "date"}, city=TEXT),
     "Name a concert, its date and the city it takes place in."),
    (obj(dish=TEXT, minutes={"type": "integer", "minimum": 1, "maximum": 600},
         ingredients={"type": "array", "items": TEXT, "minItems": 1, "maxItems": 6}),
     "Give me a recipe for phở."),
    (obj(city=TEXT, temperature_c={"type": "number", "minimum": -50, "maximum": 60},
         condition={"enum": ["sunny", "cloudy", "rainy", "snowy"]}),
     "What is the weather like in Hà Nội today?"),
    (obj(source={"enum": ["en", "vi", "fr"]}, target={"enum": ["en", "vi", "fr"]},
         text={"type": "string", "maxLength": 100}),
     "Translate 'good morning' into Vietnamese."),
    (obj(tasks={"type": "array", "items": obj(title=TEXT, done={"type": "boolean"}), "minItems": 1, "maxItems": 4}),
     "Write my to-do list for a Saturday."),
]


def one_request(client: openai.OpenAI, model: str, i: int, max_tokens: int, constrained: bool = True) -> dict:
    schema, prompt = CASES[i % len(CASES)]
    sampled = (i // len(CASES)) % 2 == 1  # every other round samples, each request with its own seed
    fmt = {"type": "json_schema", "json_schema": {"name": f"case{i % len(CASES)}", "schema": schema, "strict": True}}
    if not constrained:  # the same request, the schema only asked for in words
        fmt, prompt = openai.NOT_GIVEN, f"{prompt} Answer with JSON only, following this schema: {json.dumps(schema)}"
    t0 = time.perf_counter()
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], response_format=fmt,
                                       max_tokens=max_tokens, temperature=0.7 if sampled else 0, seed=i)
    latency = time.perf_counter() - t0
    text = r.choices[0].message.content
    try:
        jsonschema.validate(json.loads(text), schema)
        valid, why = True, ""
    except (ValueError, jsonschema.ValidationError) as e:
        valid, why = False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return {"valid": valid, "why": why, "text": text, "finish": r.choices[0].finish_reason, "latency": latency,
            "tokens": r.usage.completion_tokens}


def run(url: str, requests: int, clients: int, max_tokens: int, constrained: bool) -> tuple[list[dict], float]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    results: list[dict] = []
    todo = list(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            r = one_request(client, model, i, max_tokens, constrained)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def report(name: str, results: list[dict], wall: float, clients: int) -> None:
    valid = sum(r["valid"] for r in results)
    lat = sorted(r["latency"] for r in results)
    finishes = {f: sum(r["finish"] == f for r in results) for f in {r["finish"] for r in results}}
    print(f"{name}: valid JSON {valid}/{len(results)} ({100 * valid / len(results):.0f}%), finish {finishes}, "
          f"wall {wall:.1f} s, latency p50 {statistics.median(lat):.2f} s p90 {lat[int(0.9 * (len(lat) - 1))]:.2f} s, "
          f"{sum(r['tokens'] for r in results) / wall:.1f} completion tokens/s ({clients} clients)", flush=True)
    for r in [r for r in results if not r["valid"]][:5]:
        print(f"  invalid ({r['finish']}): {r['why']}: {r['text'][:160]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="transformers,llamacpp")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--unconstrained", action="store_true",
                        help="also send each request without response_format, the schema put in the prompt instead")
    args = parser.parse_args()
    for engine in args.engines.split(","):
        proc, url = start_server(engine, args.threads)
        try:
            for constrained in (True, False) if args.unconstrained else (True,):
                report(engine if constrained else f"{engine} (schema in the prompt only)",
                       *run(url, args.requests, args.clients, args.max_tokens, constrained), args.clients)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
