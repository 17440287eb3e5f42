"""What a command prints: tuneforge's own progress bars, results, notes, warnings and errors. Other libraries'
warnings, log lines below ERROR and progress bars are hidden unless `tuneforge --verbose`; their errors and
any traceback always show."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

# Libraries that give their logger a handler of its own and set its level when they are imported take that
# level from these variables (unless the user set them).
ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error", "TORCH_LOGS": "-torch", "MLFLOW_LOGGING_LEVEL": "ERROR",
       "WANDB_SILENT": "true"}
OWN_HANDLERS = ("transformers", "huggingface_hub", "torch", "mlflow")  # the same loggers, when already imported
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning)


def ours(module: str) -> bool:
    return module == "tuneforge" or module.startswith("tuneforge.")


def caller(frame, skip: tuple[str, ...]) -> str:
    """The module of the first frame outside the packages in `skip`."""
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in skip:
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


class OthersBelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or ours(record.name)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Hide the others' output while a command runs; on exit the warning filters, log handlers, environment
    and tqdm are as before, for a `cli.main` called inside a longer process (tests)."""
    with warnings.catch_warnings(), contextlib.ExitStack() as undo:
        drop_known_import_notices()
        if not verbose:
            _hide_warnings()
            _hide_logs(undo)
            _hide_bars(undo)
        yield


def _hide_warnings() -> None:
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        # Who called warnings.warn decides, not the caller its stacklevel names: a library's deprecation
        # notice about an argument tuneforge passes is still the library's.
        if issubclass(category, HIDDEN_WARNINGS) and not ours(caller(sys._getframe(1), ("warnings", "_py_warnings"))):
            return
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show  # catch_warnings in quiet() puts the previous one back


def _hide_logs(undo: contextlib.ExitStack) -> None:
    for name, value in ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            undo.callback(os.environ.pop, name, None)
    for name in OWN_HANDLERS:
        if name in sys.modules:
            logger = logging.getLogger(name)
            undo.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
    # Every other library logs without a handler of its own: through the root logger's handlers, or
    # logging.lastResort when there are none.
    only_errors = OthersBelowError()
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None:
            handler.addFilter(only_errors)
            undo.callback(handler.removeFilter, only_errors)


def _hide_bars(undo: contextlib.ExitStack) -> None:
    """A bar is shown only when tuneforge made it. Gated in tqdm itself because transformers' GGUF loader calls
    tqdm directly, past its own disable_progress_bar()."""
    import tqdm.std

    cls = tqdm.std.tqdm
    undo.callback(setattr, cls, "__init__", cls.__dict__["__init__"])
    init = cls.__init__

    def gated(self, *args, **kwargs):
        if not ours(caller(sys._getframe(1), ("tqdm",))):
            kwargs["disable"] = True
        init(self, *args, **kwargs)

    cls.__init__ = gated


def drop_known_import_notices() -> None:
    """Notices printed on every start (peft imports torchao and bitsandbytes) that no user can act on, dropped even
    with --verbose: torch 2.13 calls torchao's Enum pytree registrations deprecated (pytorch/ao#4848, open
    upstream); on a machine without CUDA torchao's CUDA-only kernels fail to load; and bitsandbytes cannot fetch
    an optional faster CPU kernel from the Hugging Face Hub (the `kernels` package), so it uses its PyTorch
    kernels, which work offline. On a CUDA machine torchao's notice stays visible: there it means something."""
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: "is an Enum subclass and is now natively supported" not in record.getMessage())
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # transformers' bitsandbytes loading and peft's k-bit preparation still read a property transformers renamed
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("torchao").addFilter(_torchao_without_cuda)


def _torchao_without_cuda(record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Failed to load"):
        return True
    import torch  # torchao imported it already; asking here keeps torch out of a start that never needs it

    return torch.cuda.is_available()
