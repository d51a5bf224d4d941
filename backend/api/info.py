"""Server facts for clients: the training settings and presets, base models offered, GPU and demo mode, limits."""

from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends

from backend.auth import get_current_user
from backend.presets import PRESETS
from backend.schemas import InfoOut, PresetOut
from backend.settings import get_settings, gpu_present
from backend.training_settings import SettingsOut, describe_settings

router = APIRouter(prefix="/api", tags=["info"], dependencies=[Depends(get_current_user)])


@router.get("/presets")
def list_presets() -> list[PresetOut]:
    """Starting points from the Dreambooth study: object, face, custom."""
    return [PresetOut(**asdict(preset)) for preset in PRESETS.values()]


@router.get("/training-settings")
def training_settings() -> SettingsOut:
    """Every training setting: type, default, range or choices, one-line help, and its group on the page."""
    return describe_settings()


@router.get("/info")
def server_info() -> InfoOut:
    settings = get_settings()
    return InfoOut(
        version=_version(),
        demo_mode=settings.demo_mode,
        gpu_present=gpu_present(),
        base_models=settings.allowed_base_models,
        default_base_model=settings.base_model,
        limits={
            "max_photos": settings.max_photos,
            "max_class_photos": settings.max_class_photos,
            "max_photo_bytes": settings.max_photo_bytes,
            "max_photo_pixels": settings.max_photo_pixels,
        },
    )


def _version() -> str:
    try:
        return version("dreambooth-studio")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"
