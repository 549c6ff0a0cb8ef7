"""The project's image codec (OpenCV) against PIL as the independent reference, and its errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from fusion.data.clips import read_frames
from fusion.data.imagefiles import DecodeError, read_image, write_jpeg


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8),
                    np.ones((8, 8, 1), dtype=np.uint8))  # 96 x 136 blocks: JPEG keeps them
    path = tmp_path / "photo.jpg"
    Image.fromarray(image).save(path, quality=90)
    return path


def test_reads_what_pil_decodes(photo, tmp_path):
    reference = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    rgb = read_image(str(photo), gray=False)
    assert rgb.shape == (96, 136, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - reference).max() <= 1  # libjpeg-turbo builds may round
    gray = read_image(str(photo), gray=True)
    assert np.abs(gray.astype(int) - np.asarray(Image.open(photo).convert("L"))).mean() < 1
    png = tmp_path / "photo.png"
    Image.fromarray(reference.astype(np.uint8)).save(png)
    assert (read_image(str(png), gray=False) == reference).all()  # lossless: exact


def test_write_jpeg_round_trips_through_pil(tmp_path):
    image = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20,
                    np.ones((8, 8), dtype=np.uint8))
    write_jpeg(tmp_path / "g.jpg", image)
    assert np.abs(np.asarray(Image.open(tmp_path / "g.jpg")).astype(int) - image).max() <= 2
    colour = np.stack([image, 255 - image, image // 2], axis=-1)
    write_jpeg(tmp_path / "c.jpg", colour)  # RGB order on disk, not OpenCV's BGR
    decoded = np.asarray(Image.open(tmp_path / "c.jpg")).astype(float)
    # chroma subsampling blurs colour edges; channel means stay, a BGR swap would not
    assert np.abs(decoded.mean((0, 1)) - colour.mean((0, 1))).max() < 2


@pytest.mark.parametrize("content, message", [
    (None, "No such file"), (b"", "empty file"), (b"plain text", "not a decodable image"),
    ("half", "truncated")])
def test_bad_files_are_named_errors(photo, tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content == "half":
        data = photo.read_bytes()
        content = data[:len(data) // 2]  # OpenCV alone would fill the rest with grey
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DecodeError, match=message):
        read_image(str(path), gray=False)


def test_read_frames_layouts(photo, tmp_path):
    """RGB comes back channels-last in memory, flow as planes; values as PIL decodes them."""
    for k in (1, 2):
        (tmp_path / "rgb").mkdir(exist_ok=True)
        (tmp_path / "rgb" / f"frame{k:06d}.jpg").write_bytes(photo.read_bytes())
        for axis in ("u", "v"):
            (tmp_path / axis).mkdir(exist_ok=True)
            Image.fromarray(np.full((96, 136), 100 * k + (axis == "v"), np.uint8)).save(
                tmp_path / axis / f"frame{k:06d}.jpg", quality=100)
    rgb = read_frames(tmp_path / "rgb", [0, 1, 0], gray=False, video_id="v")
    assert rgb.shape == (3, 3, 96, 136) and rgb.is_contiguous(memory_format=torch.channels_last)
    reference = torch.from_numpy(np.array(Image.open(photo))).permute(2, 0, 1).int()
    assert (rgb[2].int() - reference).abs().max() <= 1
    flow = read_frames([tmp_path / "u", tmp_path / "v"], [1, 0], gray=True, video_id="v")
    assert flow.shape == (2, 2, 96, 136) and flow.is_contiguous()
    assert flow.float().mean((2, 3)).round().tolist() == [[200, 201], [100, 101]]
