"""Continual fine-tuning: a model trained on task after task, the forgetting ledger that scores every task after
every stage, and the methods that keep old skills (replay, one adapter per task and their merge, L2-SP, EWC,
self-distillation)."""
