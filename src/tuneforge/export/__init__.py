"""Exports of a trained model: merged folders, GGUF files, Ollama Modelfiles, and their parity checks."""
