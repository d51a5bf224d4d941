"""The `dreambooth` command: users and tokens, the embedded server, local training, model making.

Heavy imports (torch, diffusers) happen only inside the commands that need them.
"""

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

from backend import client

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


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
    from backend.settings import get_settings

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

    print(make(Path(args.dir), size=args.size))


def train(args: argparse.Namespace) -> None:
    """Train on a folder of photos without the server, printing progress like the reference script."""
    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.train import train as run

    photos = tuple(sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES))
    if not photos:
        sys.exit(f"no photos (.jpg, .png, .webp) in {args.photos}")
    options = {name: getattr(args, name) for name in _train_option_names() if getattr(args, name) is not None}
    config = TrainConfig(
        **options,
        instance_images=photos,
        output_dir=Path(args.output),
        models_dir=Path(args.models_dir or os.environ.get("DATA_DIR", "./data")) / "models",
    )

    def report(progress) -> None:
        loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
        print(f"\r{progress.phase:<10} step {progress.step}/{progress.total_steps} loss {loss}", end="", flush=True)

    result = run(config, on_progress=report)
    print()
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


# Options of TrainConfig that `train` does not take as flags: it fills these itself.
_NOT_FLAGS = {"instance_images", "output_dir", "models_dir"}


def _train_option_names() -> list[str]:
    from worker.dreambooth.config import TrainConfig

    return [field.name for field in dataclasses.fields(TrainConfig) if field.name not in _NOT_FLAGS]


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, named as in diffusers' train_dreambooth.py."""
    from worker.dreambooth.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in _NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        args = typing.get_args(kind)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(arg for arg in args if arg is not type(None))
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, nargs="*", default=None, type=typing.get_args(kind)[0])
        else:
            parser.add_argument(flag, type=kind, default=None, required=required)


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
    command.add_argument("--size", choices=["tiny", "small"], default="tiny")
    command.set_defaults(run=make_model)

    command = commands.add_parser("train", help="train locally on a folder of photos, without the server")
    command.add_argument("--photos", required=True, help="folder of instance photos")
    command.add_argument("--output", required=True, help="folder for the pipeline, samples and checkpoints")
    command.add_argument("--models-dir", help="where built-in models are cached (default: $DATA_DIR/models)")
    _add_train_options(command)
    command.set_defaults(run=train)

    command = commands.add_parser("submit", help="upload photos to a server and start a training job")
    command.add_argument("photos", nargs="+", help="photo files, or folders of them")
    command.add_argument("--preset", choices=["object", "face", "custom"], default="object")
    command.add_argument("--instance-prompt", required=True, help="names the subject, e.g. 'a photo of rufus dog'")
    command.add_argument("--class-prompt", help="the subject's class, for prior preservation")
    command.add_argument("--settings-json", help="more training settings as a JSON object")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.submit))

    command = commands.add_parser("watch", help="follow a job live; exit 0 when it succeeds, 1 when it does not")
    command.add_argument("job")
    client.add_server_options(command)
    command.set_defaults(run=client.client_command(client.watch))

    command = commands.add_parser("download", help="download a job's checkpoint (resumes a partial download)")
    command.add_argument("job")
    command.add_argument("--format", choices=["single", "diffusers", "lora", "lora_kohya"], default="single")
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
