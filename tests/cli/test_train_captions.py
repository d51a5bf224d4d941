"""`dreambooth train` with instance_plus_auto_caption: NAME.txt captions are kept, the rest come from the captioning
model (the built-in tiny BLIP in demo mode) and are printed."""

from tests.cli.test_local_commands import run
from tests.e2e.stack import base_env, photo_files


def test_train_captions_the_photos_without_a_txt_and_prints_them(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = []
    for _field, (name, data, _type) in photo_files(3):
        (photos / name).write_bytes(data)
        names.append(name)
    (photos / names[0]).with_suffix(".txt").write_text("a red square\n", encoding="utf-8")
    stdout = run(
        "train", "--photos", str(photos), "--output", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models"),
        "--base-model", "builtin:tiny", "--instance-prompt", "a photo of rufus toy", "--resolution", "64",
        "--max-train-steps", "1", "--validation-inference-steps", "1", "--center-crop",
        "--caption-mode", "instance_plus_auto_caption",
        env=base_env(DEMO_MODE="true"),
    )  # fmt: skip
    lines = [line.split(": ", 2) for line in stdout.splitlines() if line.startswith("caption: ")]
    printed = {name: caption for _prefix, name, caption in lines}
    assert set(printed) == set(names[1:]) and all(printed.values())
    assert (tmp_path / "models" / "builtin-tiny-blip" / "config.json").is_file()
