"""Quantization: GGUF files for llama.cpp (gguf_writer, llamacpp), torchao int8, bitsandbytes (CUDA, or CPU)."""
