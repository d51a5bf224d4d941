"""`dreambooth submit` sends kohya's NAME.txt captions beside the photos, and with instance_plus_auto_caption the
worker captions the rest (the built-in tiny BLIP in demo mode): the job shows both kinds on its photos."""

import pytest

from tests.cli.test_client_commands import dreambooth, photo_folder, submit
from tests.e2e.stack import Client

pytestmark = pytest.mark.e2e


def test_submit_sends_txt_captions_and_the_worker_captions_the_rest(stack, user_factory, tmp_path):
    _user, token = user_factory("carol")
    folder = photo_folder(tmp_path / "photos")
    first = sorted(folder.iterdir())[0]
    first.with_suffix(".txt").write_text("a red square on grey\n", encoding="utf-8")
    job_id = submit(stack, token, folder, caption_mode="instance_plus_auto_caption", max_train_steps=2)

    watch = dreambooth(stack, token, "watch", job_id)
    assert watch.returncode == 0, watch.stderr
    photos = Client(stack.url, token).job(job_id)["photos"]
    assert (photos[0]["name"], photos[0]["caption"], photos[0]["auto_caption"]) == (
        first.name, "a red square on grey", None
    )  # fmt: skip
    assert all(photo["caption"] is None and photo["auto_caption"] for photo in photos[1:])
    prompt = "a photo of rufus toy"
    assert [photo["prompt"] for photo in photos] == [
        f"{prompt}, {photo['caption'] or photo['auto_caption']}" for photo in photos
    ]
