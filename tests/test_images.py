import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import BadImageError, apply_orientation, binarize_mask, load_image, read_mask_png, write_mask_png


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path, rgb):
    loaded = load_image(_save(tmp_path / "a.png", Image.fromarray(rgb)))
    assert np.array_equal(loaded.rgb, rgb) and loaded.notes == []


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    loaded = load_image(_save(tmp_path / "g.png", Image.fromarray(gray)))
    assert loaded.rgb.shape == (6, 8, 3)
    assert all(np.array_equal(loaded.rgb[:, :, c], gray) for c in range(3))
    assert "grayscale" in loaded.notes[0]


def test_rgba_alpha_is_composited_and_noted(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    loaded = load_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert loaded.rgb[0, 0, 0] == 200 and loaded.rgb[0, 1, 0] == 0 and loaded.rgb[1, 0, 0] == 100
    assert "alpha" in loaded.notes[0]


def test_cmyk_jpeg_is_converted(tmp_path):
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(_save(tmp_path / "c.jpg", img, quality=100))
    r, g, b = loaded.rgb[3, 4].astype(int)
    assert r > 200 and g < 60 and b < 60
    assert "CMYK" in loaded.notes[0]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "d.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    assert loaded.rgb[0, :, 0].tolist() == [0, 128, 255]
    assert "8-bit" in loaded.notes[0]


def test_exif_rotation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)  # 8 wide, 6 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.stored_size == (8, 6)
    assert loaded.rgb.shape == (8, 6, 3) and loaded.orientation == 6
    # a mask laid out like the stored pixels rotates the same way
    mask = np.zeros((6, 8), np.uint8)
    mask[0, 0] = 1  # top-left as stored -> top-right once rotated clockwise
    rotated = apply_orientation(mask, 6)
    assert rotated.shape == (8, 6) and rotated[0, 5] == 1


def test_truncated_and_non_images_are_refused(tmp_path, rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((200, 150)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_image(tmp_path / "t.jpg")
    (tmp_path / "n.jpg").write_text("hello, not an image file")
    with pytest.raises(BadImageError, match="not an image file"):
        load_image(tmp_path / "n.jpg")
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        load_image(tmp_path / "e.jpg")


def test_binarize_mask_conventions():
    assert binarize_mask(np.array([[0, 1]]))[0].tolist() == [[False, True]]
    assert binarize_mask(np.array([[0, 255]]))[0].tolist() == [[False, True]]
    mask, notes = binarize_mask(np.array([[3, 200, 128, 127]], dtype=np.uint8))
    assert mask.tolist() == [[False, True, True, False]] and "thresholded" in notes[0]
    with pytest.raises(BadImageError):
        binarize_mask(np.zeros((2, 2, 3), np.uint8) + np.array([0, 1, 2], np.uint8))


def test_mask_png_is_0_255_and_round_trips(tmp_path):
    mask = np.array([[True, False], [False, True]])
    write_mask_png(tmp_path / "m.png", mask)
    raw = np.asarray(Image.open(tmp_path / "m.png"))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(read_mask_png(tmp_path / "m.png"), mask)
