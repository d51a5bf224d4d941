"""memory_profile "auto": the savers chosen for a GPU's size, adding to what was asked and never undoing it."""

import importlib.util
from pathlib import Path

import pytest

from worker.dreambooth.memory import GIB, apply_memory_plan, plan_memory

SAVERS_16GB = {"use_8bit_adam": True, "mixed_precision": "fp16", "gradient_checkpointing": True, "sample_batch_size": 8}


def test_cpu_and_profile_none_change_nothing(make_config, tmp_path: Path):
    config = make_config(tmp_path)
    assert plan_memory(config, "cpu", None).changes == ()
    none = make_config(tmp_path, memory_profile="none")
    plan = plan_memory(none, "cuda", 8 * GIB)
    assert (plan.profile, plan.changes) == ("none", ())
    assert apply_memory_plan(none, plan) is none


def test_24gb_trains_with_plain_adamw(make_config, tmp_path: Path):
    plan = plan_memory(make_config(tmp_path), "cuda", int(23.6 * GIB))
    assert plan.profile == "24gb" and dict(plan.changes) == {"sample_batch_size": 16}


def test_16gb_gets_the_studys_recipe(make_config, tmp_path: Path):
    config = make_config(tmp_path, train_batch_size=2)
    plan = plan_memory(config, "cuda", int(15.7 * GIB))
    assert plan.profile == "16gb" and dict(plan.changes) == SAVERS_16GB
    applied = apply_memory_plan(config, plan)
    assert applied.use_8bit_adam and applied.gradient_checkpointing and applied.mixed_precision == "fp16"
    assert "use_8bit_adam=True" in plan.describe() and "16 GiB GPU" in plan.describe()
    assert plan.as_dict() == {"profile": "16gb", "gpu_memory_gib": 15.7, "changes": SAVERS_16GB}


def test_12gb_also_splits_the_batch_into_accumulation_steps(make_config, tmp_path: Path):
    config = make_config(tmp_path, train_batch_size=4, gradient_accumulation_steps=2)
    plan = plan_memory(config, "cuda", int(11.7 * GIB))
    xformers = importlib.util.find_spec("xformers") is not None
    expected = {**SAVERS_16GB, "gradient_accumulation_steps": 8, "train_batch_size": 1}
    del expected["sample_batch_size"]
    if xformers:
        expected["enable_xformers_memory_efficient_attention"] = True
    assert plan.profile == "12gb" and dict(plan.changes) == expected


@pytest.mark.parametrize("asked", [{"mixed_precision": "bf16"}, {"use_8bit_adam": True, "sample_batch_size": 32}])
def test_what_the_user_asked_for_is_kept(make_config, tmp_path: Path, asked: dict):
    config = make_config(tmp_path, **asked)
    plan = plan_memory(config, "cuda", 16 * GIB)
    assert not set(asked) & set(dict(plan.changes))
    assert all(getattr(apply_memory_plan(config, plan), k) == v for k, v in asked.items())


def test_sdxl_full_fine_tuning_is_refused_below_its_floor_naming_lora(make_config, tmp_path: Path):
    from worker.dreambooth.errors import JobError

    config = make_config(tmp_path, base_model="builtin:tiny-sdxl")
    with pytest.raises(JobError, match="training_method lora") as refused:
        plan_memory(config, "cuda", int(23.6 * GIB), family="sdxl")
    assert refused.value.code == "out_of_memory"
    plan = plan_memory(config, "cuda", int(39.5 * GIB), family="sdxl")
    assert plan.profile == "sdxl-40gb" and dict(plan.changes)["use_8bit_adam"] is True
    assert dict(plan.changes)["gradient_checkpointing"] is True
    assert plan_memory(config, "cuda", int(79.1 * GIB), family="sdxl").profile == "sdxl-80gb"


def test_sdxl_lora_fits_consumer_gpus_with_its_own_tiers(make_config, tmp_path: Path):
    config = make_config(tmp_path, base_model="builtin:tiny-sdxl", training_method="lora", train_batch_size=2)
    assert plan_memory(config, "cuda", int(23.6 * GIB), family="sdxl").as_dict()["changes"] == {
        "mixed_precision": "fp16"
    }
    plan = plan_memory(config, "cuda", int(15.7 * GIB), family="sdxl")
    assert plan.profile == "sdxl-lora-16gb" and dict(plan.changes)["gradient_checkpointing"] is True
    small = dict(plan_memory(config, "cuda", int(11.7 * GIB), family="sdxl").changes)
    assert (small["train_batch_size"], small["gradient_accumulation_steps"]) == (1, 2)
