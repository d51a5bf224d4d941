"""Training presets: a starting point per subject kind and model family, each with where its values come from.

SD 1.x and 2.x take the Dreambooth study's object and face presets (shared/STUDY.md), and face_16gb: its
pivotal tuning (finding 8) with the memory savers that fit a 16 GB GPU. SDXL has presets of its
own, named `sdxl_object` and `sdxl_face`, from diffusers' SDXL Dreambooth LoRA guide
(examples/dreambooth/README_sdxl.md, train_dreambooth_lora_sdxl.py). Every name is unique, so a job's stored
`preset` says exactly which values it started from; a preset names the families it fits, and a job whose base
model is of another family is refused.
"""

from dataclasses import dataclass, field

from formats.families import FAMILIES

SD_FAMILIES = ("sd1", "sd2")

# diffusers' SDXL Dreambooth LoRA guide: its dog-toy command (README_sdxl.md), rank from the script's default.
SDXL_LORA_GUIDE = {
    "training_method": "lora",
    "lora_rank": 4,
    "learning_rate": 1e-4,
    "max_train_steps": 500,
    "train_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "mixed_precision": "fp16",
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
}


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    summary: str  # one line: what it does
    families: tuple[str, ...]  # the model families it fits (formats/families.py names)
    reason: str  # one line: why it fits those models, and where its values come from
    values: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="object",
            title="Object",
            summary="Pets, toys and things: 400 steps at a low learning rate (2e-6), batch 4; "
            "the study found this learns the subject without overfitting.",
            families=SD_FAMILIES,
            reason="From the Dreambooth study's full fine-tunes of Stable Diffusion 1.x: its best setting for objects.",
            values={
                "learning_rate": 2e-6,
                "max_train_steps": 400,
                "train_batch_size": 4,
                "with_prior_preservation": False,
                "train_text_encoder": False,
            },
        ),
        Preset(
            name="face",
            title="Face",
            summary="People: 1200 steps at 1e-6, batch 2, with prior preservation (200 class images "
            "of 'a photo of a person') and text-encoder training, which the study found matter most for faces.",
            families=SD_FAMILIES,
            reason="From the Dreambooth study's face runs on Stable Diffusion 1.x: prior preservation, more steps "
            "and the text encoder.",
            values={
                "learning_rate": 1e-6,
                "max_train_steps": 1200,
                "train_batch_size": 2,
                "with_prior_preservation": True,
                "class_prompt": "a photo of a person",
                "num_class_images": 200,
                "prior_loss_weight": 1.0,
                "train_text_encoder": True,
                "crop": "face",
            },
        ),
        Preset(
            name="face_16gb",
            title="Face on 16 GB (pivotal)",
            summary="People on a 16 GB GPU: 2000 steps of textual inversion of a new token, then 500 Dreambooth "
            "steps at 1e-6 with prior preservation; the study found it beat plain Dreambooth but not text-encoder "
            "training, and copied the photos' style a little more. Name the subject with the new token: 'a photo of "
            "<sks> person'.",
            families=SD_FAMILIES,
            reason="The Dreambooth study's finding 8 (textual inversion, then Dreambooth), with 8-bit Adam, fp16, "
            "gradient checkpointing and accumulation to fit 16 GB.",
            values={
                "training_method": "pivotal",
                "pivotal_second_phase": "full",
                "textual_inversion_steps": 2000,
                "max_train_steps": 500,
                "learning_rate": 1e-6,
                "with_prior_preservation": True,
                "class_prompt": "a photo of a person",
                "num_class_images": 200,
                "prior_loss_weight": 1.0,
                "train_text_encoder": False,
                "use_8bit_adam": True,
                "mixed_precision": "fp16",
                "gradient_checkpointing": True,
                "train_batch_size": 1,
                "gradient_accumulation_steps": 2,
                "crop": "face",
            },
        ),
        Preset(
            name="sdxl_object",
            title="Object (SDXL, LoRA)",
            summary="Pets, toys and things: LoRA rank 4 at 1e-4 for 500 steps, one photo per micro-step and 4 "
            "accumulated, fp16.",
            families=("sdxl",),
            reason="diffusers' SDXL Dreambooth LoRA guide (README_sdxl.md): LoRA fits SDXL where full "
            "fine-tuning needs about 30 GiB.",
            values={**SDXL_LORA_GUIDE, "with_prior_preservation": False, "train_text_encoder": False},
        ),
        Preset(
            name="sdxl_face",
            title="Face (SDXL, LoRA)",
            summary="People: the SDXL LoRA values with prior preservation (100 class images of 'a photo of a "
            "person') and the text encoders' adapters trained too.",
            families=("sdxl",),
            reason="diffusers' SDXL LoRA guide (it ran the same values on a face), plus the study's face findings: "
            "prior preservation and text-encoder training.",
            values={
                **SDXL_LORA_GUIDE,
                "with_prior_preservation": True,
                "class_prompt": "a photo of a person",
                # note: train_dreambooth_lora_sdxl.py's default; class images at 1024 px are costly to generate
                "num_class_images": 100,
                "prior_loss_weight": 1.0,
                "crop": "face",
                "train_text_encoder": True,
            },
        ),
        Preset(
            name="custom",
            title="Custom",
            summary="Your own settings. Start with a low learning rate and add steps until the "
            "samples satisfy: Dreambooth overfits quickly.",
            families=tuple(FAMILIES),
            reason="Fits every model: only the defaults, and what you set.",
        ),
    )
}


def presets_for(family: str | None) -> list[Preset]:
    """The presets that fit a model of `family`, its default first; every preset while the family is unknown."""
    if family is None:
        return list(PRESETS.values())
    return [preset for preset in PRESETS.values() if family in preset.families]


def default_preset(family: str | None) -> str:
    """The preset a job of a model of `family` starts from when the request names none."""
    return presets_for(family)[0].name


def misfit_message(preset: str, family: str, base_model: str = "this base model") -> str | None:
    """Why `preset` cannot start a job on `base_model`, of `family` (naming the presets that can); None if it fits."""
    if preset not in PRESETS or family in PRESETS[preset].families:
        return None
    meant_for = " and ".join(FAMILIES[name].title for name in PRESETS[preset].families)
    fitting = ", ".join(candidate.name for candidate in presets_for(family))
    return f"{preset} is for {meant_for} models, and {base_model} is {FAMILIES[family].title}; use {fitting}"
