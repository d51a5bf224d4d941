"""Training presets from the Dreambooth study (shared/STUDY.md): a starting point per subject kind."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    summary: str  # one line: what it does and why
    values: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="object",
            title="Object",
            summary="Pets, toys and things: 400 steps at a low learning rate (2e-6), batch 4; "
            "the study found this learns the subject without overfitting.",
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
            values={
                "learning_rate": 1e-6,
                "max_train_steps": 1200,
                "train_batch_size": 2,
                "with_prior_preservation": True,
                "class_prompt": "a photo of a person",
                "num_class_images": 200,
                "prior_loss_weight": 1.0,
                "train_text_encoder": True,
            },
        ),
        Preset(
            name="custom",
            title="Custom",
            summary="Your own settings. Start with a low learning rate and add steps until the "
            "samples satisfy: Dreambooth overfits quickly.",
        ),
    )
}
