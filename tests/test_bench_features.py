"""The shared batched file encoder of the benchmarks."""

import pytest
import torch

from clip_app.bench.features import encode_image_files
from clip_app.bench.timing import StageTimer
from clip_app.images import ImageError
from tests.fakes import COLOUR_NAMES, solid_image


def write_images(folder, names):
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        solid_image(name).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 1])
def test_features_in_file_order_match_direct_encoding(tmp_path, colour_encoder, workers):
    paths = write_images(tmp_path, COLOUR_NAMES[:5])
    timer = StageTimer()
    feats = encode_image_files(colour_encoder, paths, batch_size=2, workers=workers, timer=timer, progress=False)
    direct = colour_encoder.encode_images([solid_image(n) for n in COLOUR_NAMES[:5]])
    torch.testing.assert_close(feats, direct)
    assert set(timer.as_dict()) == {"data_loading", "image_encoding"}


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_file_raises_image_error_naming_it(tmp_path, colour_encoder, workers):
    paths = write_images(tmp_path, ["red", "blue"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: "):
        encode_image_files(colour_encoder, [*paths, broken], batch_size=2, workers=workers, progress=False)
