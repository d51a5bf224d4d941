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
