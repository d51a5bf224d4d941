"""The HTTP client of `dreambooth submit | watch | download | generate | jobs | cancel`: the REST API over httpx.

Talks to a running server like the page does; no torch, no worker imports. Errors from the API
end the command with one line and exit code 2.
"""

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from backend.training_settings import TrainingSettings
from formats.captions import caption_beside

DEFAULT_SERVER = "http://127.0.0.1:8000"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
TERMINAL = {"succeeded", "failed", "cancelled"}
POLL_SECONDS = 2.0
# note: a generation takes seconds, not hours, so it is polled more often than a job
GENERATION_POLL_SECONDS = 0.5
CHUNK_BYTES = 1 << 20
BAR_WIDTH = 24


class ApiError(Exception):
    """An error reply of the API (or no reply at all), as one line a person can act on."""

    def __init__(self, message: str, status: int = 0, code: str = "", field: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


# ── the client ───────────────────────────────────────────────────────────────────────────────


class StudioClient:
    """A user of the API: every call sends the bearer token and raises ApiError on an error reply."""

    def __init__(self, server: str, token: str, timeout: float = 60):
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def submit(self, photos: list[Path], settings: dict, captions: dict[str, str] | None = None) -> dict:
        """Upload photos with the job's settings and, optionally, captions by photo file name."""
        files = [("photos", (path.name, path.read_bytes())) for path in photos]
        data = {"settings": json.dumps(settings)}
        if captions:
            data["captions"] = json.dumps(captions)
        return self._json("POST", "/api/jobs", files=files, data=data)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/api/jobs/{job_id}")

    def jobs(self, limit: int = 20) -> dict:
        return self._json("GET", "/api/jobs", params={"limit": limit})

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/api/jobs/{job_id}/cancel")

    def generate(self, job_id: str, params: dict) -> dict:
        return self._json("POST", f"/api/jobs/{job_id}/generations", json=params)

    def generation(self, generation_id: str) -> dict:
        return self._json("GET", f"/api/generations/{generation_id}")

    def events(self, job_id: str) -> Iterator[dict]:
        """The job on every change, from the server-sent events stream, until the stream ends."""
        with self._stream("GET", f"/api/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=None)) as response:
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []

    def download(self, url: str, target: Path, on_progress: Callable[[int, int], None]) -> Path:
        """Save `url` to `target` via `target.part`, resuming a partial file when the server allows."""
        partial = target.with_name(target.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._stream("GET", url, headers=headers, ok_statuses={416}) as response:
            stale = response.status_code == 416  # the partial file is longer than the checkpoint
            if not stale:
                _save(response, partial, have, on_progress)
        if stale:
            partial.unlink()
            return self.download(url, target, on_progress)
        partial.replace(target)
        return target

    def _json(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        _raise_for_error(response)
        return response.json()

    @contextmanager
    def _stream(self, method: str, path: str, ok_statuses: Container[int] = (), **kwargs) -> Iterator[httpx.Response]:
        """`http.stream(...)` that raises ApiError for an error status other than `ok_statuses`."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400 and response.status_code not in ok_statuses:
                    response.read()
                    _raise_for_error(response)
                yield response
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.HTTPError) -> ApiError:
        return ApiError(f"the connection to {self.server} failed ({exc.__class__.__name__}: {exc})")


def _save(response: httpx.Response, partial: Path, have: int, on_progress: Callable[[int, int], None]) -> None:
    """Append a 206 reply to the `have` bytes already in `partial`; any other reply replaces them."""
    resumed = response.status_code == 206
    done = have if resumed else 0
    total = done + int(response.headers.get("Content-Length", 0))
    with partial.open("ab" if resumed else "wb") as out:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            out.write(chunk)
            done += len(chunk)
            on_progress(done, total)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise ApiError(error["message"], response.status_code, error["code"], error.get("field"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            f"the server answered {response.status_code}: {response.text[:200]}", response.status_code
        ) from None


# ── output ───────────────────────────────────────────────────────────────────────────────────


def progress_line(job: dict) -> str:
    """One line: status or phase, a bar, step, loss and ETA."""
    progress = job["progress"]
    step, total = progress["step"], progress["total_steps"]
    filled = round(BAR_WIDTH * step / total) if total else 0
    parts = [f"{job['phase'] or job['status']:<24}", f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"]
    if total:
        parts.append(f"step {step}/{total}")
    if progress["loss"] is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress["eta_seconds"] is not None and job["status"] == "running":
        parts.append(f"ETA {format_seconds(progress['eta_seconds'])}")
    return "  ".join(parts)


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


class LiveLine:
    """One line of progress: rewritten in place on a terminal, else printed as a new line now and then."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.1 if self.tty else 2.0
        self.shown = ""
        self.pending = ""
        self.shown_at = 0.0

    def show(self, text: str) -> None:
        self.pending = text
        if text != self.shown and time.monotonic() - self.shown_at >= self.interval:
            self._write()

    def end(self) -> None:
        if self.pending != self.shown:
            self._write()
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()

    def _write(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.pending.ljust(len(self.shown)))
        else:
            self.stream.write(self.pending + "\n")
        self.stream.flush()
        self.shown = self.pending
        self.shown_at = time.monotonic()


# ── commands ─────────────────────────────────────────────────────────────────────────────────


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("DREAMBOOTH_SERVER", DEFAULT_SERVER),
        help=f"the API's address (default: $DREAMBOOTH_SERVER or {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DREAMBOOTH_TOKEN"), help="API token (default: $DREAMBOOTH_TOKEN)"
    )


def client_command(
    run: Callable[[StudioClient, argparse.Namespace], int | None],
) -> Callable[[argparse.Namespace], None]:
    """Wrap a command: build the client from the flags; an ApiError is one line and exit code 2."""

    def command(args: argparse.Namespace) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per request
        if not args.token:
            _fail("no API token: pass --token or set DREAMBOOTH_TOKEN (`dreambooth create-user NAME` prints one)")
        try:
            code = run(StudioClient(args.server, args.token), args)
        except ApiError as error:
            _fail(error.message)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or 0)

    return command


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def submit(client: StudioClient, args: argparse.Namespace) -> None:
    """Upload photos with the settings given; print the new job's id as the last line."""
    settings = settings_from_flags(args) | _settings_json(args.settings_json)
    photos = collect_photos(args.photos)
    # note: kohya's NAME.txt beside NAME.jpg, as `dreambooth train` reads them; the server keys captions by file name
    captions = {path.name: caption for path in photos if (caption := caption_beside(path))}
    job = client.submit(photos, settings, captions)
    print(
        f"uploaded {len(photos)} photos ({len(captions)} with captions); job {job['status']}: "
        f"{client.server}/#/jobs/{job['id']}",
        file=sys.stderr,
    )
    print(job["id"])


def settings_from_flags(args: argparse.Namespace) -> dict:
    """The training settings given as flags (`submit` and `train` take one per setting); the rest are left out."""
    values = {name: getattr(args, name, None) for name in TrainingSettings.model_fields}
    return {name: value for name, value in values.items() if value is not None}


def _settings_json(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(f"--settings-json is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ApiError("--settings-json must be a JSON object, like '{\"max_train_steps\": 800}'")
    return settings


def collect_photos(paths: list[str]) -> list[Path]:
    """The files named, with folders expanded to the photos directly inside them."""
    photos: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            photos.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES))
        elif path.is_file():
            photos.append(path)
        else:
            raise ApiError(f"no such file or folder: {name}")
    if not photos:
        raise ApiError("no photos (.jpg, .jpeg, .png, .webp) found")
    return photos


def watch(client: StudioClient, args: argparse.Namespace) -> int:
    """Follow a job to its end: exit 0 when it succeeded, 1 when it failed or was cancelled."""
    line = LiveLine()
    job = None
    try:
        for job in follow(client, args.job):
            line.show(progress_line(job))
    finally:
        line.end()
    if job["status"] == "succeeded":
        print(f"succeeded: {job['id']} (download it with `dreambooth download {job['id']}`)")
        evaluation = job.get("evaluation") or {}
        if evaluation.get("recommended_step") is not None and not evaluation.get("recommended_is_final"):
            step = evaluation["recommended_step"]
            print(f"recommended step: {step}: {evaluation['reason']} (`dreambooth download {job['id']} --step {step}`)")
        return 0
    if job["status"] == "cancelled":
        print(f"cancelled: {job['id']} was cancelled before it finished", file=sys.stderr)
    else:
        reason = job["error"]["message"] if job.get("error") else "the server gave no reason"
        print(f"failed: {reason}", file=sys.stderr)
    return 1


def follow(client: StudioClient, job_id: str) -> Iterator[dict]:
    """The job on every change until it ends: the events stream, or polling every 2 s if it breaks."""
    last = None
    try:
        for last in client.events(job_id):
            yield last
    except ApiError as error:
        if error.status:  # the server answered with an error (404, 401): polling would too
            raise
    while last is None or last["status"] not in TERMINAL:
        if last is not None:
            time.sleep(POLL_SECONDS)
        last = client.job(job_id)
        yield last


def download(client: StudioClient, args: argparse.Namespace) -> None:
    """Save a checkpoint with a progress bar, resuming a partial download."""
    job = client.job(args.job)
    checkpoint = _find_checkpoint(job, args.format, args.dtype, args.step)
    params = {"format": args.format, "dtype": args.dtype}
    if args.step is not None:
        params["step"] = args.step
    url = str(httpx.URL(f"/api/jobs/{job['id']}/checkpoint", params=params))
    target = Path(args.output or _default_name(job, checkpoint, args))
    line = LiveLine()
    bar = lambda done, total: line.show(_download_line(target.name, done, total))
    try:
        client.download(url, target, bar)
    finally:
        line.end()
    if checkpoint and target.stat().st_size != checkpoint["size_bytes"]:
        raise ApiError(f"{target} has {target.stat().st_size} bytes, the server announced {checkpoint['size_bytes']}")
    print(target)


def _find_checkpoint(job: dict, checkpoint_format: str, dtype: str, step: int | None) -> dict | None:
    """The artifact the server will send (the latest match), for its name and size; None: let it say why."""
    matches = [
        artifact
        for artifact in job["artifacts"]
        if artifact["kind"] == "checkpoint"
        and (artifact["format"] or "single") == checkpoint_format
        and artifact["dtype"] == dtype
        and (step is None or artifact["step"] == step)
    ]
    return max(matches, key=lambda artifact: artifact["step"], default=None)


def _default_name(job: dict, checkpoint: dict | None, args: argparse.Namespace) -> str:
    step = checkpoint["step"] if checkpoint else args.step
    suffix = {"diffusers": ".zip", "embedding": "-embedding.safetensors"}.get(args.format, ".safetensors")
    at_step = f"-step{step}" if step is not None else ""
    return f"dreambooth-{job['id'][:8]}{at_step}-{args.dtype}{suffix}"


def _download_line(name: str, done: int, total: int) -> str:
    filled = round(BAR_WIDTH * done / total) if total else 0
    percent = f"{100 * done / total:5.1f}%" if total else ""
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"{name}  [{bar}]  {percent}  {format_bytes(done)} of {format_bytes(total)}"


def generate(client: StudioClient, args: argparse.Namespace) -> int:
    """Ask a finished job for new images, wait for them, save the PNGs and print their paths;
    exit 1 when the generation failed."""
    options = {
        "negative_prompt": args.negative_prompt,
        "scheduler": args.scheduler,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "num_images": args.num_images,
        "step": args.step,
    }
    params = {"prompt": args.prompt} | {name: value for name, value in options.items() if value is not None}
    generation = client.generate(args.job, params)
    line = LiveLine()
    try:
        while generation["status"] not in TERMINAL:
            line.show(_generation_line(generation))
            time.sleep(GENERATION_POLL_SECONDS)
            generation = client.generation(generation["id"])
    finally:
        line.end()
    if generation["status"] != "succeeded":
        reason = generation["error"]["message"] if generation.get("error") else "the server gave no reason"
        print(f"failed: {reason}", file=sys.stderr)
        return 1
    out = Path(args.out or f"{generation['job_id'][:8]}-generations")
    out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(generation["images"]):
        target = out / f"{generation['id'][:8]}-{index}-seed{image['seed']}.png"
        client.download(image["url"], target, lambda _done, _total: None)
        print(target)
    return 0


def _generation_line(generation: dict) -> str:
    params = generation["params"]
    doing = "waiting for the GPU" if generation["status"] == "queued" else "rendering"
    return (
        f"{generation['status']:<10} {doing}: {params['num_images']} images at step {params['step']}, "
        f"{params['scheduler']} {params['num_inference_steps']} steps, seed {params['seed']}"
    )


def list_jobs(client: StudioClient, args: argparse.Namespace) -> None:
    """The caller's jobs, newest first: one line each."""
    page = client.jobs(args.limit)
    for job in page["items"]:
        progress = job["progress"]
        steps = f"{progress['step']}/{progress['total_steps']}" if progress["total_steps"] else "-"
        phase = job["phase"] or "-"
        created, prompt = job["created_at"][:19], job["settings"]["instance_prompt"]
        print(f"{job['id']}  {job['status']:<10} {phase:<24} {steps:>11}  {created}  {prompt}")
    if page["total"] > len(page["items"]):
        print(f"({len(page['items'])} of {page['total']}; --limit shows more)", file=sys.stderr)


def cancel(client: StudioClient, args: argparse.Namespace) -> None:
    job = client.cancel(args.job)
    if job["status"] == "cancelled":
        print(f"cancelled: {job['id']}")
    elif job["status"] in TERMINAL:
        print(f"{job['id']} had already {job['status']}")
    else:
        print(f"cancel requested: {job['id']} stops at its next training step")
