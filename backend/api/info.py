"""Server facts for clients: the training settings and presets, base models offered with their families, GPU and
demo mode, limits."""

from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends

from backend import routing
from backend.auth import CurrentUser, get_current_user
from backend.base_models import model_facts
from backend.db import SessionDep
from backend.presets import PRESETS, presets_for
from backend.schemas import BaseModelOut, InfoOut, PresetOut, WorkerOut
from backend.settings import get_settings, gpu_present
from backend.training_settings import SettingsOut, describe_settings

router = APIRouter(prefix="/api", tags=["info"], dependencies=[Depends(get_current_user)])


@router.get("/presets")
def list_presets() -> list[PresetOut]:
    """Every preset, with the model families it fits and where its values come from (`/api/info` says which fit
    each base model)."""
    return [PresetOut(**asdict(preset)) for preset in PRESETS.values()]


@router.get("/training-settings")
def training_settings() -> SettingsOut:
    """Every training setting: type, default, range or choices, one-line help, and its group on the page."""
    return describe_settings()


@router.get("/info")
def server_info(session: SessionDep, user: CurrentUser) -> InfoOut:
    """Server facts; the live workers are counted for everyone and listed for admins (ADMIN_USERS)."""
    settings = get_settings()
    workers = routing.live_workers(session)
    admins = {name.strip() for name in settings.admin_users.split(",")}
    return InfoOut(
        version=_version(),
        demo_mode=settings.demo_mode,
        gpu_present=gpu_present(),
        base_models=settings.allowed_base_models,
        default_base_model=settings.base_model,
        models=[_base_model_out(name) for name in settings.allowed_base_models],
        gpu_memory_gib=settings.gpu_memory_gib,
        limits={
            "max_photos": settings.max_photos,
            "max_class_photos": settings.max_class_photos,
            "max_photo_bytes": settings.max_photo_bytes,
            "max_photo_pixels": settings.max_photo_pixels,
        },
        live_workers=len(workers),
        workers=[WorkerOut.model_validate(worker, from_attributes=True) for worker in workers]
        if user.name in admins
        else None,
    )


def _base_model_out(name: str) -> BaseModelOut:
    facts = model_facts(name)
    return BaseModelOut(
        name=name,
        family=facts.family_name,
        family_title=facts.family.title if facts.family else None,
        resolution=facts.resolution,
        presets=[preset.name for preset in presets_for(facts.family_name)],
    )


def _version() -> str:
    try:
        return version("dreambooth-studio")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"
