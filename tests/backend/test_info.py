"""Presets and server facts."""

from backend.presets import PRESETS
from backend.settings import TINY_MODEL, get_settings


def test_presets_come_from_the_study(client, auth_headers):
    response = client.get("/api/presets", headers=auth_headers)
    assert response.status_code == 200
    presets = {preset["name"]: preset for preset in response.json()}
    assert list(presets) == list(PRESETS)
    assert presets["face"]["values"]["learning_rate"] == 1e-6
    assert presets["face"]["values"]["with_prior_preservation"] is True
    assert presets["object"]["values"]["max_train_steps"] == 400


def test_info_describes_the_server(client, auth_headers):
    info = client.get("/api/info", headers=auth_headers).json()
    settings = get_settings()
    assert info["demo_mode"] is True
    assert info["default_base_model"] == TINY_MODEL
    assert info["base_models"] == settings.allowed_base_models
    assert isinstance(info["gpu_present"], bool)
    assert info["limits"]["max_photos"] == settings.max_photos
    assert info["version"]


def test_info_and_presets_need_a_token(client):
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/presets").status_code == 401


def test_training_settings_describe_every_field_with_its_range_default_and_help(client, auth_headers):
    from backend.training_settings import GROUPS, TrainingSettings

    response = client.get("/api/training-settings", headers=auth_headers)
    assert response.status_code == 200
    described = response.json()
    assert described["groups"] == list(GROUPS)
    settings = {setting["name"]: setting for setting in described["settings"]}
    assert list(settings) == list(TrainingSettings.model_fields)
    assert all(setting["help"] and setting["group"] in GROUPS for setting in settings.values())
    assert settings["max_train_steps"] | {"help": ""} == settings["max_train_steps"] | {
        "type": "int", "default": 400, "minimum": 1, "maximum": 20000, "exclusive_minimum": False, "help": "",
    }  # fmt: skip
    assert (settings["learning_rate"]["minimum"], settings["learning_rate"]["exclusive_minimum"]) == (0, True)
    assert settings["resolution"]["multiple_of"] == 64
    assert settings["validation_scheduler"]["choices"][0] == "ddim"
    assert settings["seed"]["nullable"] and settings["seed"]["default"] is None
    assert settings["instance_prompt"]["required"]
    assert settings["validation_prompts"] | {"help": ""} == settings["validation_prompts"] | {
        "type": "list", "default": [], "max_items": 8, "help": "",
    }  # fmt: skip
    # note: LoRA and EMA as such, or as pivotal tuning's second phase
    assert settings["lora_rank"]["shown_when"] == [
        {"training_method": "lora"}, {"training_method": "pivotal", "pivotal_second_phase": "lora"},
    ]  # fmt: skip
    assert settings["use_ema"]["shown_when"] == [
        {"training_method": "full"}, {"training_method": "pivotal", "pivotal_second_phase": "full"},
    ]  # the pair with LoRA is refused  # fmt: skip
    assert settings["instance_prompt"]["max_length"] == settings["class_prompt"]["max_length"] == 500
    assert settings["validation_prompts"]["max_length"] == 500  # each prompt
    assert settings["max_train_steps"]["max_length"] is None
    assert client.get("/api/training-settings").status_code == 401


def test_lora_with_ema_names_the_setting_to_change(client, auth_headers, photo_bytes):
    import json

    settings = {"instance_prompt": "a photo of rufus dog", "training_method": "lora", "use_ema": True}
    files = [("photos", (f"{i}.png", photo_bytes(), "image/png")) for i in range(3)]
    response = client.post("/api/jobs", data={"settings": json.dumps(settings)}, files=files, headers=auth_headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "settings.use_ema"
    assert "training_method lora" in response.json()["error"]["message"]
