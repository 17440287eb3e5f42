"""Parity reports how much the source itself preferred its token where an export's answer first differs."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.export.parity import GOLDEN_PROMPTS, HFRunner, run_parity


@pytest.fixture()
def source_and_flipped(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    source = HFRunner(model, tok)
    ids = source.prompt_ids(GOLDEN_PROMPTS[0])
    logits = source.next_logits(ids)
    first, second = logits.topk(2).indices.tolist()
    # The "export": the same weights, except the bias towards the source's first token is gone, so its
    # greedy answer starts with the runner-up token.
    flipped = copy.deepcopy(model)
    head = flipped.get_output_embeddings()
    if head.weight is flipped.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    with torch.no_grad():
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
        head.bias[first] = -(logits[first] - logits[second]) - 1.0
    return source, HFRunner(flipped, tok), float(logits[first] - logits[second]), first, second


def test_first_difference_carries_the_source_logit_gap(source_and_flipped):
    source, export, gap, first, second = source_and_flipped
    result = run_parity(source, export, [GOLDEN_PROMPTS[0]], max_new_tokens=4)
    row = result.rows[0]
    assert row["source_tokens"][0] == first and row["export_tokens"][0] == second
    assert row["first_difference"] == 0 and not row["tokens_equal"]
    assert row["source_gap"] == pytest.approx(gap, abs=1e-4) and row["source_gap"] > 0


def test_near_tie_counts_as_equivalent_only_under_the_margin(source_and_flipped):
    source, export, gap, _, _ = source_and_flipped
    result = run_parity(source, export, [GOLDEN_PROMPTS[0]], max_new_tokens=4)
    result.tie_margin = gap * 2
    assert result.exact_match_rate == 0.0 and result.equivalent_rate == 1.0
    result.tie_margin = gap / 2
    assert result.equivalent_rate == 0.0
    assert "near-tie" in result.markdown()
    same = run_parity(source, source, [GOLDEN_PROMPTS[0]], max_new_tokens=4)
    assert same.rows[0]["source_gap"] is None and same.equivalent_rate == 1.0
