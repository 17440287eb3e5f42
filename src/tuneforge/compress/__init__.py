"""Compression building blocks: pruning masks, block removal, masked recovery LoRA, distillation losses.

The verbs that use them live in tuneforge.recipes (prune, distill, quantize, compare).
"""
