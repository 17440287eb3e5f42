"""One decode step (one new token a row) of a Llama-architecture model, written with as few PyTorch ops as it takes.

Why our own forward and not transformers': on CPU a decode step of a small model is mostly op dispatch. The
embedded model's HF forward runs about 5,000 ops a step (mask building, attention dispatch, rotate_half's slices
and cats, RMSNorm's casts), which cost as much as its matrix products; this one runs about 45 a layer, calls the
same modules (so packed weights and peft's per-row LoRA layers work unchanged), and reads the same KV cache.
Prefill stays on transformers' forward. Its logits equal transformers' (bit for bit in bf16 on the embedded
model; tests check fp32 and per-row adapters against it). `serve --compile` compiles the same step with inductor
(`LeanDecoder.compile`): its elementwise ops fuse into C++ kernels and Python leaves the step."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from tuneforge.models.adapters import base_model
from tuneforge.serve.engines.kv_room import roomy_cache

# Architectures whose decoder layer is exactly: RMSNorm, q/k/v (bias allowed), rotary on q and k, attention over
# the cache, o_proj, residual, RMSNorm, SiLU-gated MLP, residual. Anything else keeps transformers' forward.
LEAN_TYPES = {"llama": "LlamaRMSNorm", "qwen2": "Qwen2RMSNorm", "mistral": "MistralRMSNorm"}
log = logging.getLogger(__name__)
WARM_WIDTH = 37
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def lean_decoder(model) -> LeanDecoder | None:
    """A LeanDecoder for `model`, or None where its architecture or adapters need transformers' own forward."""
    net = base_model(model)
    config = net.config
    norm_type = LEAN_TYPES.get(getattr(config, "model_type", None))
    inner = getattr(net, "model", None)
    if norm_type is None or inner is None or getattr(config, "hidden_act", None) != "silu":
        return None
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return None
    norms = [inner.norm] + [n for layer in inner.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    if any(type(n).__name__ != norm_type for n in norms):
        return None
    lora_at = {name for name, module in net.named_modules() if _has_lora(module)}
    allowed = {f"model.layers.{i}.{p}" for i in range(len(inner.layers)) for p in PROJECTIONS}
    if not lora_at <= allowed:  # LoRA on embeddings or the head: transformers' forward handles those
        return None
    return LeanDecoder(net)


class LeanDecoder:
    def __init__(self, net):
        config = net.config
        self.net, self.inner = net, net.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.dtype = self.inner.embed_tokens.weight.dtype
        self.layers = [(layer, [_caller(layer.get_submodule(p)) for p in PROJECTIONS], _fused(layer))
                       for layer in self.inner.layers]
        self.compiled = None
        self.eager_steps = 0  # steps the compiled step left to eager code (a shape its graphs do not cover)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache,
                 adapter_names: list[str] | None = None) -> torch.Tensor:
        """ids (rows, 1), mask (rows, cache length + 1), positions (rows, 1), cache of kv_room layers
        -> logits (rows, vocab)."""
        rows = ids.shape[0]
        compiled = self.compiled is not None and adapter_names is None
        # Rows without padding need no mask, which lets SDPA take its fastest path; else an additive one, built
        # once here rather than by SDPA from a boolean mask in every layer. The compiled step always gets one: a
        # graph fewer to compile (its speed-up was measured that way)
        attend = None if bool(mask.all()) and not compiled else torch.zeros(
            (rows, 1, 1, mask.shape[1]), dtype=self.dtype).masked_fill_(mask.view(rows, 1, 1, -1) == 0, float("-inf"))
        column = ids.new_empty((rows, self.kv_heads, 1, self.head_dim), dtype=self.dtype)
        have = [layer.room_for(column, column) for layer in cache.layers][0]
        step = self.compiled if compiled else self.step
        logits = step(ids, positions, attend, [layer.key_buffer for layer in cache.layers],
                      [layer.value_buffer for layer in cache.layers], torch.tensor([have]), have + 1, adapter_names)
        for layer in cache.layers:
            layer.advance(have + 1)
        return logits

    def compile(self) -> None:
        """Compile the adapter-free step with inductor (fused C++ kernels behind its C++ wrapper, which leaves
        Python out of the step) and run each graph the engine meets once, so no request waits for a compile: one
        row (sizes of 1 get their own graph) and several."""
        from torch._inductor import config as inductor

        compiled = torch.compile(self.step, dynamic=True, options={"cpp_wrapper": True})
        warm = False

        def run(*args):
            # Freezing makes the packed weights graph constants, which inductor needs to lower the packed products.
            # It is read as a global (compile options do not reach it), so it is set around each call, where any
            # compile happens, and nowhere else in the process. Once warm, a step that would need a new graph runs
            # eagerly instead of stalling every request on a compile.
            try:
                with inductor.patch(freezing=True), torch.compiler.set_stance("fail_on_recompile" if warm else "default"):
                    return compiled(*args)
            except RuntimeError as e:
                if not warm or "fail_on_recompile" not in str(e):
                    raise
                if not self.eager_steps:
                    log.warning("a decode step needs a graph the warm-up did not compile; such steps run eagerly "
                                "(%s)", " ".join(str(e).split())[:400])
            self.eager_steps += 1
            return self.step(*args)

        self.compiled = run
        for rows in (1, 2):
            cache = roomy_cache(self.net.config)
            # A cache width that equals no size of the model (sizes that are equal get unified into one symbol)
            columns = torch.zeros((rows, self.kv_heads, WARM_WIDTH - 1, self.head_dim), dtype=self.dtype)
            for layer in cache.layers:
                layer.room_for(columns, columns)
                layer.advance(WARM_WIDTH - 1)
            mask = torch.ones((rows, WARM_WIDTH), dtype=torch.long)
            self(torch.zeros((rows, 1), dtype=torch.long), mask, mask.sum(-1, keepdim=True) - 1, cache)
        warm = True

    def step(self, ids, positions, attend, key_buffers, value_buffers, slot, width: int, adapter_names):
        """The step itself, tensors in and out: the new keys and values are written at column `slot` of the
        buffers, whose first `width` columns are the cache it attends to."""
        rows, heads, kv_heads, dim = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
        h = self.inner.embed_tokens(ids[:, 0])
        cos, sin = self.inner.rotary_emb(h, positions)
        cos = cos.view(rows, 1, dim)
        half = dim // 2
        # rotate_half(x) * sin == roll(x, half) * sin with its first half negated: 2 ops a tensor instead of 5
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).view(rows, 1, dim)
        qk_width = (heads + kv_heads) * dim
        for i, (layer, (q_proj, k_proj, v_proj, o_proj, gate, up, down), (qkv, gate_up)) in enumerate(self.layers):
            x = _rms(h, layer.input_layernorm)
            if qkv is not None:
                both = qkv(x)
                qk, v = both[:, :qk_width], both[:, qk_width:]
            else:
                qk, v = torch.cat([q_proj(x, extra), k_proj(x, extra)], dim=-1), v_proj(x, extra)
            qk = qk.reshape(rows, heads + kv_heads, dim)  # queries and keys rotated together
            qk = qk * cos + torch.roll(qk, half, -1) * sin
            # index_copy_ at a tensor slot and narrow to an int width keep both symbolic when compiled
            key_buffers[i].index_copy_(2, slot, qk[:, heads:].unsqueeze(2))
            value_buffers[i].index_copy_(2, slot, v.reshape(rows, kv_heads, 1, dim))
            keys, values = key_buffers[i].narrow(2, 0, width), value_buffers[i].narrow(2, 0, width)
            # Grouped-query heads as extra query rows of their key/value head: no repeat of the cache
            out = F.scaled_dot_product_attention(qk[:, :heads].reshape(rows, kv_heads, heads // kv_heads, dim), keys,
                                                 values, attn_mask=attend, scale=self.scale)
            h = h + o_proj(out.reshape(rows, heads * dim), extra)
            x = _rms(h, layer.post_attention_layernorm)
            if gate_up is not None:
                g, u = gate_up(x).chunk(2, dim=-1)
            else:
                g, u = gate(x, extra), up(x, extra)
            h = h + down(F.silu(g) * u, extra)
        return self.net.lm_head(_rms(h, self.inner.norm))


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    """transformers' Llama RMSNorm (fp32 statistics, weight applied in the input dtype) as one fused op."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon).to(x.dtype)


def _fused(layer):
    """q/k/v and gate/up as one packed product each, where the layers are packed and carry no adapter."""
    from tuneforge.models.packed import fused_packed

    a, mlp = layer.self_attn, layer.mlp
    return (fused_packed(a, "packed_qkv", [a.q_proj, a.k_proj, a.v_proj]),
            fused_packed(mlp, "packed_gate_up", [mlp.gate_proj, mlp.up_proj]))


def _has_lora(module) -> bool:
    return hasattr(module, "lora_A")  # peft's LoRA layers


def _caller(module):
    """Plain and packed layers take the input only; peft's LoRA layers also take the rows' adapter names."""
    if _has_lora(module):
        return lambda x, extra: module(x, **extra)
    return lambda x, extra: module(x)
