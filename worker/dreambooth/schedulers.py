"""The samplers users may pick for samples and generations, built on a pipeline's own noise schedule."""

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# The API's names (backend.training_settings.Scheduler) -> the diffusers class and the options making that sampler.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    # note: the study found DDIM rescues overfit Dreambooth models; it is every default here
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def make_scheduler(name: str, config) -> SchedulerMixin:
    """The sampler called `name` on the noise schedule of `config` (any diffusers scheduler's config)."""
    try:
        cls, options = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}") from None
    return cls.from_config(config, **options)
