"""`dreambooth train`'s photos: kohya's NAME.txt captions beside them, checked and cropped as the server does."""

import numpy as np
from PIL import Image
from skimage import data as samples

from worker.core_config import local_photos


def test_captions_beside_photos_and_face_crops(tmp_path):
    Image.fromarray(samples.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(samples.coffee()).save(tmp_path / "coffee.jpg")
    (tmp_path / "astronaut.txt").write_text("in a white space suit\n", encoding="utf-8")
    paths = (tmp_path / "astronaut.png", tmp_path / "coffee.jpg")
    settings = {"instance_prompt": "a photo of rufus person", "resolution": 256, "crop": "face"}
    inputs, checks = local_photos(settings, paths)
    assert inputs["instance_captions"] == ("in a white space suit", None)
    face_box, coffee_box = inputs["instance_crop_boxes"]
    [face] = checks[0].facts.faces
    assert face_box[0] <= face[0] and face_box[1] <= face[1] and face[2] <= face_box[2] and face[3] <= face_box[3]
    assert coffee_box == (100, 0, 500, 400) and [w.code for w in checks[1].warnings] == ["no_face"]
    assert np.asarray(Image.open(paths[0])).shape[:2] == (512, 512)


def test_an_explicit_crop_mode_wins_over_center_crop(tmp_path):
    from worker.core_config import core_config

    base = {"instance_prompt": "a photo of rufus toy", "resolution": 64, "base_model": "builtin:tiny"}
    for crop, center_crop, expected in [
        ("random", True, False),
        ("center", False, True),
        ("auto", True, True),
        ("auto", False, False),
        ("bucket", True, True),  # bucket: center_crop says centred or random within the rounding
    ]:
        settings = {**base, "crop": crop, "center_crop": center_crop}
        config = core_config(settings, output_dir=tmp_path, models_dir=tmp_path, instance_images=(tmp_path / "a.png",))
        assert config.center_crop is expected, (crop, center_crop)
