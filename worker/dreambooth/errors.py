"""Failures a user can act on, with a stable code: what the core raises and the worker records on a job."""

import errno
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Write failures that mean the file store, not the job, is at fault.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}

TRAINING_OUT_OF_MEMORY = (
    "The GPU ran out of memory. Set memory_profile to auto, or turn on use_8bit_adam, gradient_checkpointing and "
    "mixed_precision fp16; lower train_batch_size (raising gradient_accumulation_steps instead), resolution or "
    "sample_batch_size; turn off train_text_encoder; or train with training_method lora, which needs far less."
)


class JobError(Exception):
    """A failure with a stable code (`out_of_memory`, `storage_error`, ...) and a message the user can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def out_of_memory_as_error(run: Callable[[], T], message: str) -> T:
    """run(); a CUDA out-of-memory error becomes JobError("out_of_memory", message), with the GPU memory the
    failed run held handed back, so the process can take the next job."""
    import torch
    from diffusers.training_utils import free_memory

    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        pass
    # note: only now, outside the except block, are the error's frames (and the tensors they hold) gone
    free_memory()
    raise JobError("out_of_memory", message)


def storage_failure_as_error(run: Callable[[], T], message: str, subject: str) -> T:
    """run(); a failing file store (STORAGE_ERRNOS) becomes JobError("storage_error", message), logged for `subject`
    (say "job <id>")."""
    try:
        return run()
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        log.error("%s: the file store failed: %s", subject, exc)
    raise JobError("storage_error", message)
