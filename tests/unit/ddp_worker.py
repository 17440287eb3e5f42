"""Run by test_finetune.py under torchrun: trains the tiny model (lora or qlora) on 2 ranks and dumps each rank's LoRA weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import make_cfg  # noqa: E402

from tuneforge.recipes.finetune import finetune  # noqa: E402, F401


def main():
    model_dir, data, out, method = sys.argv[1:5]
    cfg = make_cfg(model_dir, data, out, epochs=1)
    cfg.eval_before = False
    cfg.method = method
    from tuneforge.recipes import finetune as F

    s = F.setup(cfg)
    assert s.accelerator.num_processes == 2
    F.fit(s)
    rank = s.accelerator.process_index
    weights = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(weights, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
