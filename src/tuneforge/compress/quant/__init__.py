"""Quantization: GGUF files for llama.cpp (gguf_writer, llamacpp, llamacpp_quantize) and torchao int8.
bitsandbytes quantizes while a model loads, so it lives with loading (models/bnb.py)."""
