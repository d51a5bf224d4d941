"""Run a training program unchanged and record when each of its optimizer steps ends.

    STEP_CLOCK_FILE=steps.json python -m bench.step_clock SCRIPT.py [ARGUMENTS ...]
    STEP_CLOCK_FILE=steps.json python -m bench.step_clock -m MODULE [ARGUMENTS ...]

The program runs in this process as `python SCRIPT.py ARGUMENTS` (or `python -m MODULE ARGUMENTS`) would run it
(runpy, as __main__, with sys.argv set). Before it starts, torch's global optimizer post-step hook
(torch.optim.optimizer.register_optimizer_step_post_hook) is registered: it fires after the step of every
torch.optim.Optimizer, so of torch's AdamW (fused, foreach or not) and of bitsandbytes' optimizers, which subclass
it. accelerate's wrapper (AcceleratedOptimizer) is no Optimizer step of its own: it calls the wrapped optimizer's
step only on the micro-step that syncs gradients, and a step that fp16's GradScaler skips never runs, so the hook
fires once per optimizer step actually taken, whatever gradient accumulation says. Should one optimizer's step call
another's, only the outer one counts.

At exit (also when the program raises or calls sys.exit) STEP_CLOCK_FILE gets a JSON object:
  started: time.perf_counter() when this module started
  steps: time.perf_counter() at the end of every optimizer step
  optimizers: the optimizer classes that stepped
  peak_cuda_mb, peak_cuda_reserved_mb: torch.cuda.max_memory_allocated / max_memory_reserved (when CUDA was used)
  error: the exception that ended the program, if any
perf_counter is CLOCK_MONOTONIC on Linux, one clock for all processes, so a parent can set these times against
its own (when it started the child, when the child exited).

`steps_per_second` is how bench/real_script.py turns the timestamps into a speed.
"""

import atexit
import itertools
import json
import os
import runpy
import statistics
import sys
import time

STARTED = time.perf_counter()
FILE_VARIABLE = "STEP_CLOCK_FILE"


def steps_per_second(steps: list[float], warmup: int) -> float | None:
    """Optimizer steps per second: 1 / the median interval between consecutive steps, after the first `warmup`
    steps (their intervals included, the one ending at step warmup + 1 is the first counted). The median, so a pause
    between two steps (sampling, a saved checkpoint, a burst of load from elsewhere) does not count. None when fewer
    than two steps remain."""
    kept = steps[warmup:]
    if len(kept) < 2:
        return None
    return 1 / statistics.median(b - a for a, b in itertools.pairwise(kept))


class Recorder:
    """Collects the step times and writes them once."""

    def __init__(self, path: str):
        self.path, self.steps, self.optimizers, self.error, self.written = path, [], set(), None, False
        self._depth = 0

    def pre_step(self, optimizer, args, kwargs) -> None:
        self._depth += 1

    def post_step(self, optimizer, args, kwargs) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.steps.append(time.perf_counter())
            self.optimizers.add(f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(self.pre_step)
        register_optimizer_step_post_hook(self.post_step)
        atexit.register(self.write)

    def write(self) -> None:
        if self.written:
            return
        self.written = True
        result = {"started": STARTED, "steps": self.steps, "optimizers": sorted(self.optimizers), **_cuda_peaks()}
        if self.error:
            result["error"] = self.error
        with open(self.path, "w") as file:
            json.dump(result, file)


def _cuda_peaks() -> dict:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    return {
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20,
        "peak_cuda_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
    }


def main(argv: list[str]) -> None:
    path = os.environ.get(FILE_VARIABLE)
    if not path or not argv or (argv[0] == "-m" and len(argv) < 2):
        sys.exit(f"usage: {FILE_VARIABLE}=FILE python -m bench.step_clock (SCRIPT | -m MODULE) [ARGUMENTS ...]")
    recorder = Recorder(path)
    recorder.install()
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            # note: as `python SCRIPT.py` does, the script's folder comes first on the import path
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            recorder.error = f"SystemExit({exit_.code!r})"
        raise
    except BaseException as exc:
        recorder.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        recorder.write()


if __name__ == "__main__":
    main(sys.argv[1:])
