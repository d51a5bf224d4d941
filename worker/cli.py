"""The `dreambooth` command: users and tokens, the embedded server, local training, model making.

Heavy imports (torch, diffusers) happen only inside the commands that need them.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from backend import client
from backend.base_models import model_facts
from backend.settings import get_settings
from backend.settings_text import default_text, preset_text, range_text
from backend.training_settings import SettingOut, TrainingSettings, describe_settings, model_context
from formats.embedding import EMBEDDING_FORMAT
from formats.families import BUILTIN_MODELS
from formats.lora import LORA_FORMATS

TRAIN_DESCRIPTION = (
    "Train on a folder of photos on this machine: no server, database or broker. The settings are a server "
    "job's: validated alike, the preset filling what the flags leave out; the base model defaults to "
    "$BASE_MODEL, else the built-in tiny model without a GPU and Stable Diffusion 1.5 with one."
)


# ── users and tokens ─────────────────────────────────────────────────────────────────────────


def create_user(args: argparse.Namespace) -> None:
    from backend.auth import create_user as create
    from backend.db import get_sessionmaker

    with get_sessionmaker()() as session:
        user, token = create(session, args.name)
    print(f"created user {user.name}; their API token (shown once):")
    print(token)


def ensure_local_user() -> str:
    """The token of the local user of an embedded install, made on first start and kept 0600."""
    from backend import storage
    from backend.auth import authenticate, create_user, issue_token
    from backend.db import get_sessionmaker
    from backend.errors import Unauthorized
    from backend.models import User

    token_file = storage.data_dir() / "local-token"
    with get_sessionmaker()() as session:
        if token_file.exists():
            token = token_file.read_text().strip()
            try:
                authenticate(session, token)
                return token
            except Unauthorized:
                pass
        user = session.query(User).filter_by(name="local").one_or_none()
        token = issue_token(session, user) if user else create_user(session, "local")[1]
    storage.write_atomic(token_file, token.encode())
    token_file.chmod(0o600)
    return token


# ── the embedded server ──────────────────────────────────────────────────────────────────────


def migrate() -> None:
    from alembic.config import Config

    from alembic import command

    command.upgrade(Config(str(Path(__file__).resolve().parent.parent / "alembic.ini")), "head")


def serve(_args: argparse.Namespace) -> None:
    """Run the API and one worker together (what `make run` does), until interrupted."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate()
    token = ensure_local_user()
    python = sys.executable
    processes = [
        subprocess.Popen(
            [python, "-m", "uvicorn", "backend.main:app", "--host", settings.host, "--port", str(settings.port)]
        ),
        subprocess.Popen(
            [
                python,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--loglevel",
                settings.log_level,
            ]
        ),
    ]
    mode = "demo mode: no GPU, training the built-in tiny model" if settings.demo_mode else "GPU mode"
    print(
        f"\n  Dreambooth Studio is running ({mode}; data in {settings.data_dir}).\n"
        f"  Open  http://{settings.host}:{settings.port}/#token={token}\n"
        f"  API token: {token}\n",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    sys.exit(max(process.returncode or 0 for process in processes))


# ── local training and models ────────────────────────────────────────────────────────────────


def make_model(args: argparse.Namespace) -> None:
    from worker.dreambooth.tiny import make_model as make

    print(make(Path(args.dir), args.model))


def train(args: argparse.Namespace) -> None:
    """Train on a folder of photos without the server, with a server job's settings, printing progress."""
    from backend import storage
    from worker.core_config import core_config, drop_training_state, local_photos

    settings = _validated_settings(args)
    photos, checks = local_photos(settings, _photos_in(args.photos, "--photos"))
    class_photos = _photos_in(args.class_photos, "--class-photos") if args.class_photos else ()
    models_dir = Path(args.models_dir) if args.models_dir else storage.models_dir()
    if settings["caption_mode"] == "instance_plus_auto_caption":
        photos["instance_captions"] = _auto_captions(photos, models_dir)
    # note: torch and diffusers take seconds to import, so only once the settings and photos are good
    from worker.dreambooth.train import train as run

    config = core_config(
        settings,
        **photos,
        class_images=class_photos,
        output_dir=Path(args.output),
        models_dir=models_dir,
        resume_from_checkpoint=args.resume_from_checkpoint,
        device=args.device,
    )

    for path, check in zip(photos["instance_images"], checks):
        for warning in check.warnings:
            print(f"warning: {path.name}: {warning.message}")

    def report(progress) -> None:
        loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        print(f"\r{progress.phase:<10} step {progress.step}/{progress.total_steps} loss {loss}", end="", flush=True)

    result = run(config, on_progress=report)
    drop_training_state(config)
    print()
    _print_result(result)


def _auto_captions(photos: dict, models_dir: Path) -> tuple[str | None, ...]:
    """Each photo's caption: its NAME.txt, else one from the captioning model (CAPTION_MODEL), printed."""
    from worker.dreambooth.captioner import caption_photos

    given = photos["instance_captions"]
    missing = [path for path, caption in zip(photos["instance_images"], given) if not caption]
    found = dict(zip(missing, caption_photos(missing, get_settings().caption_model, models_dir) if missing else []))
    for path, caption in found.items():
        print(f"caption: {path.name}: {caption or '(none)'}")
    return tuple(caption or found.get(path) for path, caption in zip(photos["instance_images"], given))


def _validated_settings(args: argparse.Namespace) -> dict:
    """The settings given as flags, validated as a server job's (preset and defaults filled in); a bad value
    ends the command with one line naming its flag and exit code 2."""
    flags = client.settings_from_flags(args)
    base_model = flags.get("base_model") or get_settings().base_model
    # note: as on the server, the base model's family picks the presets that fit and the resolution default
    facts = model_facts(base_model)
    context = model_context(base_model, facts.family_name, facts.resolution)
    try:
        settings = TrainingSettings.model_validate({**flags, "base_model": base_model}, context=context)
    except ValidationError as exc:
        error = exc.errors()[0]
        _fail(f"{flag_name(str(error['loc'][0]))}: {error['msg'].removeprefix('Value error, ')}")
    return settings.model_dump(mode="json")


def _photos_in(folder: str, flag: str) -> tuple[Path, ...]:
    """The photos directly inside `folder`; none (or no folder) ends the command."""
    path = Path(folder)
    suffixes = client.PHOTO_SUFFIXES
    photos = tuple(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)) if path.is_dir() else ()
    if not photos:
        _fail(f"{flag}: no photos ({', '.join(sorted(suffixes))}) in {folder}")
    return photos


def _fail(message: str) -> None:
    """End the command as a bad flag does: one line and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _print_result(result) -> None:
    """What the run left behind, a line each."""
    if result.memory_plan is not None:
        print(result.memory_plan.describe())
    for dtype, path in result.checkpoints.items():
        print(f"checkpoint ({dtype}): {path}")
    for sample in result.samples:
        print(f"sample: {sample.path}")
    for step, path in result.kept_steps.items():
        print(f"kept weights (step {step}): {path}")
    if result.evaluation and result.evaluation["recommended_step"] is not None:
        print(f"recommended step: {result.evaluation['recommended_step']} ({result.evaluation['reason']})")


# ── training settings as flags ───────────────────────────────────────────────────────────────

METAVARS = {"int": "N", "float": "NUMBER", "string": "TEXT", "list": "TEXT"}


def flag_name(setting: str) -> str:
    """A setting's flag: its name as in diffusers' train_dreambooth.py, with dashes."""
    return "--" + setting.replace("_", "-")


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One flag per training setting, with its help, default and range, in the settings' groups; a flag left out
    leaves the setting to the preset and the defaults."""
    described = describe_settings()
    groups = {name: parser.add_argument_group(name) for name in described.groups}
    for setting in described.settings:
        groups[setting.group].add_argument(
            flag_name(setting.name), required=setting.required, help=_setting_help(setting), **_flag_kind(setting)
        )


def _flag_kind(setting: SettingOut) -> dict:
    if setting.type == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if setting.type == "choice":
        return {"choices": setting.choices}
    if setting.type == "list":
        return {"action": "append", "metavar": METAVARS["list"]}
    return {"type": {"int": int, "float": float, "string": str}[setting.type], "metavar": METAVARS[setting.type]}


def _setting_help(setting: SettingOut) -> str:
    presets, allowed = preset_text(setting), range_text(setting)
    notes = ["required" if setting.required else f"default: {default_text(setting)}"] + ([presets] if presets else [])
    if setting.type == "list":
        notes.append(f"repeat the flag for each, {allowed}")
    elif allowed:
        notes.append(f"range {allowed}")
    # note: argparse formats help with %, so a literal one must be doubled
    return f"{setting.help} ({'; '.join(notes)})".replace("%", "%%")


def _add_local_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of `train` that a server job does not have: its folders and device."""
    local = parser.add_argument_group("Local run")
    local.add_argument(
        "--photos", required=True, metavar="FOLDER",
        help="folder of instance photos (NAME.txt beside NAME.jpg: its caption)",
    )  # fmt: skip
    local.add_argument(
        "--class-photos",
        metavar="FOLDER",
        help="folder of class photos for prior preservation; they count first toward --num-class-images",
    )
    local.add_argument(
        "--output", required=True, metavar="FOLDER", help="folder for the pipeline, samples and checkpoints"
    )
    local.add_argument(
        "--models-dir", metavar="FOLDER", help="where built-in models are cached (default: $DATA_DIR/models)"
    )
    local.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    local.add_argument(
        "--resume-from-checkpoint",
        metavar="STATE",
        help="continue an interrupted run: latest, or a folder under OUTPUT/training-state",
    )


# ── entry point ──────────────────────────────────────────────────────────────────────────────


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreambooth", description="Dreambooth Studio")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("create-user", help="create a user and print their API token")
    command.add_argument("name")
    command.set_defaults(run=create_user)

    command = commands.add_parser("serve", help="run the API and a worker together (make run)")
    command.set_defaults(run=serve)

    command = commands.add_parser("make-model", help="generate a built-in test model in diffusers format")
    command.add_argument("dir")
    # note: --size is the old name of --model, from when every built-in model was SD 1.x
    command.add_argument(
        "--model", "--size", choices=list(BUILTIN_MODELS), default="tiny", metavar="NAME",
        help="the built-in model: " + ", ".join(f"{name} ({model.family})" for name, model in BUILTIN_MODELS.items()),
    )  # fmt: skip
    command.set_defaults(run=make_model)

    command = commands.add_parser(
        "train",
        help="train locally on a folder of photos, without the server",
        usage="%(prog)s --photos FOLDER --output FOLDER --instance-prompt TEXT [options]",
        description=TRAIN_DESCRIPTION,
    )
    _add_local_run_options(command)
    add_setting_options(command)
    command.set_defaults(run=train)

    command = commands.add_parser(
        "submit",
        help="upload photos to a server and start a training job",
        usage="%(prog)s PHOTOS [PHOTOS ...] --instance-prompt TEXT [options]",
        description="Upload photos and start a training job with the settings given as flags; the server fills in "
        "the rest from the preset and its defaults. Prints the job's id as the last line.",
    )
    command.add_argument("photos", nargs="+", help="photo files, or folders of them")
    command.add_argument(
        "--settings-json", metavar="JSON", help="more training settings as a JSON object (its values win over flags)"
    )
    client.add_server_options(command)
    add_setting_options(command)
    command.set_defaults(run=client.client_command(client.submit))

    command = commands.add_parser("watch", help="follow a job live; exit 0 when it succeeds, 1 when it does not")
    command.add_argument("job")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.watch))

    command = commands.add_parser("download", help="download a job's checkpoint (resumes a partial download)")
    command.add_argument("job")
    command.add_argument(
        "--format",
        choices=["single", "diffusers", *LORA_FORMATS, EMBEDDING_FORMAT],
        default="single",
        help="single (default), diffusers (a zip), lora or lora_kohya (LoRA jobs), embedding (pivotal jobs' token)",
    )
    command.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    command.add_argument("--step", type=int, help="a kept earlier step (default: the last)")
    command.add_argument("-o", "--output", help="file to write (default: the server's name for it)")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.download))

    command = commands.add_parser("generate", help="render new images from a finished job and save them as PNGs")
    command.add_argument("job")
    command.add_argument("--prompt", required=True, help="what to draw; name the subject as the instance prompt did")
    command.add_argument("--negative-prompt", help="what to keep out of the images")
    command.add_argument("--scheduler", help="the sampler: ddim (default), pndm, lms, euler, euler_a or dpmpp_2m")
    command.add_argument("--steps", type=int, help="sampling steps per image (default: 100, as the study advises)")
    command.add_argument("--guidance-scale", type=float, help="how closely to follow the prompt (default: 7.5)")
    command.add_argument("--seed", type=int, help="image i uses seed + i (default: one the server picks)")
    command.add_argument("--num-images", type=int, help="how many images (default: 4)")
    command.add_argument("--step", type=int, help="a kept training step to render from (default: the last)")
    command.add_argument("--out", help="folder for the PNGs (default: ./<job id prefix>-generations/)")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.generate))

    command = commands.add_parser("jobs", help="list your jobs on a server, newest first")
    command.add_argument("--limit", type=int, default=20)
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.list_jobs))

    command = commands.add_parser("cancel", help="cancel a job on a server")
    command.add_argument("job")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.cancel))
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
