"""The README's training-settings table is the one backend/training_settings.py describes."""

from backend.settings_text import README, REFRESH_COMMAND, markdown_table, with_fresh_table
from backend.training_settings import TrainingSettings


def test_the_readme_settings_table_is_up_to_date():
    readme = README.read_text()
    assert with_fresh_table(readme) == readme, (
        f"README.md's training-settings table is out of date with backend/training_settings.py: run `{REFRESH_COMMAND}`"
    )


def test_the_table_has_a_row_per_setting_with_ranges_and_preset_values():
    rows = {line.split(" | ")[0].strip("|` "): line for line in markdown_table().splitlines()[2:]}
    assert len(rows) == len(TrainingSettings.model_fields)
    assert rows["max_train_steps"] == (
        "| `max_train_steps` | 400; face preset: 1200, face_16gb/sdxl_object/sdxl_face presets: 500 | 1-20000 | "
        "Optimizer steps; Dreambooth overfits fast: start low, add steps until the samples satisfy |"
    )
    assert (
        "| 2e-6; face/face_16gb presets: 1e-6, sdxl_object/sdxl_face presets: 0.0001 | (0, 0.001] |"
        in rows["learning_rate"]
    )
    assert "| 0 | [0, 1) |" in rows["lora_dropout"]
    assert "| 512 | 64-1024, multiple of 64 |" in rows["resolution"]
    assert "| empty | up to 8 |" in rows["validation_prompts"]
    assert "| fp16 | no, fp16, bf16 |" in rows["mixed_precision"]
    assert "| false; face/face_16gb/sdxl_face presets: true | bool |" in rows["with_prior_preservation"]
    assert "| 200; sdxl_face preset: 100 |" in rows["num_class_images"]
    assert "| required |  |" in rows["instance_prompt"]
