"""Frame index rows -> Frames: decoding, the parquet schema, and errors that name scene, frame and file."""

import io
import uuid

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sas_ray.datasets.frames import FRAME_INDEX_SCHEMA, decode_matrix, frame_index_table, frame_row, read_frame
from sas_ray.errors import InputError

K = np.array([[30.0, 0, 7.5], [0, 30.0, 5.5], [0, 0, 1]])
POSE = np.array([[0, -1, 0, 1.5], [1, 0, 0, -2.0], [0, 0, 1, 0.25], [0, 0, 0, 1]], dtype=np.float64)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _put(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


@pytest.fixture
def root():
    return f"memory://frames-{uuid.uuid4().hex}"


def _smooth_rgb(h=12, w=16) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 12, y * 16, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def test_read_frame_decodes_png_color_depth_pose_and_k(root):
    rgb = _smooth_rgb()
    depth_mm = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 7
    row = frame_row("scene0001_00", "20", _put(f"{root}/c.png", _png(rgb)), K, POSE, 16, 12,
                    depth_uri=_put(f"{root}/d.png", _png(depth_mm)), depth_scale=1000.0)
    frame = read_frame(row)
    assert (frame.scene_id, frame.frame_id, frame.size) == ("scene0001_00", "20", (12, 16))
    np.testing.assert_array_equal(frame.rgb, rgb)  # PNG is lossless
    np.testing.assert_array_equal(frame.depth, (depth_mm / np.float32(1000)).astype(np.float32))
    assert frame.depth.dtype == np.float32 and frame.depth[0, 1] == np.float32(0.007)
    np.testing.assert_array_equal(frame.pose, POSE)
    np.testing.assert_array_equal(frame.intrinsic, K)


def test_read_frame_jpeg_without_depth(root):
    rgb = _smooth_rgb()
    row = frame_row("s", "CAM_FRONT", _put(f"{root}/c.jpg", _jpeg(rgb)), K, POSE, 16, 12)
    frame = read_frame(row)
    assert frame.depth is None
    assert np.abs(frame.rgb.astype(int) - rgb).max() <= 12  # JPEG tolerance


def test_frame_index_table_round_trips_through_parquet(root):
    rows = [frame_row("a", "0", "memory://x/0.jpg", K, POSE, 16, 12, "memory://x/0.png", 1000.0),
            frame_row("a", "1", "memory://x/1.jpg", K, POSE, 16, 12)]
    table = frame_index_table(rows)
    assert table.schema.equals(FRAME_INDEX_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    assert back == rows
    assert back[1]["depth_uri"] is None and back[1]["depth_scale"] is None
    np.testing.assert_array_equal(np.reshape(back[0]["pose"], (4, 4)), POSE)


def test_frame_index_table_rejects_wrong_row():
    bad = frame_row("a", "0", "x.jpg", K, POSE, 16, 12)
    bad["intrinsic"] = bad["intrinsic"][:6]
    with pytest.raises(InputError, match=r"a frame 0 \(x.jpg\): intrinsic needs 9"):
        frame_index_table([bad])
    with pytest.raises(InputError, match="keys"):
        frame_index_table([{"scene": "a"}])
    with pytest.raises(InputError, match="positive depth_scale"):
        frame_index_table([frame_row("a", "0", "x.jpg", K, POSE, 16, 12, "x.png", 0.0)])


def _assert_names(err: pytest.ExceptionInfo, *parts: str) -> None:
    for part in parts:
        assert part in str(err.value), (part, str(err.value))


def test_truncated_jpeg_names_scene_frame_file(root):
    data = _jpeg(_smooth_rgb(48, 64))
    color = _put(f"{root}/color/140.jpg", data[: len(data) // 2])
    row = frame_row("scene0007_00", "140", color, K, POSE, 64, 48)
    with pytest.raises(InputError) as err:
        read_frame(row)
    _assert_names(err, "scene0007_00", "frame 140", color)


def test_depth_of_wrong_size_names_both_files(root):
    color = _put(f"{root}/color/140.jpg", _jpeg(_smooth_rgb(12, 16)))
    depth = _put(f"{root}/depth/140.png", _png(np.zeros((6, 8), np.uint16)))
    row = frame_row("scene0007_00", "140", color, K, POSE, 16, 12, depth, 1000.0)
    with pytest.raises(InputError, match="8x6 but .* is 16x12") as err:
        read_frame(row)
    _assert_names(err, "scene0007_00", "frame 140", depth, color)


def test_nan_pose_names_scene_frame_file(root):
    color = _put(f"{root}/color/140.jpg", _jpeg(_smooth_rgb()))
    pose = POSE.copy()
    pose[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN") as err:
        read_frame(frame_row("scene0007_00", "140", color, K, pose, 16, 12))
    _assert_names(err, "scene0007_00", "frame 140", color)


def test_missing_file_8bit_depth_and_size_mismatch(root):
    color = _put(f"{root}/c.jpg", _jpeg(_smooth_rgb()))
    with pytest.raises(InputError, match="not found") as err:
        read_frame(frame_row("s", "1", f"{root}/nope.jpg", K, POSE, 16, 12))
    _assert_names(err, "s frame 1", f"{root}/nope.jpg")
    depth8 = _put(f"{root}/d8.png", _png(np.zeros((12, 16), np.uint8)))
    with pytest.raises(InputError, match="16-bit"):
        read_frame(frame_row("s", "1", color, K, POSE, 16, 12, depth8, 1000.0))
    with pytest.raises(InputError, match="16x12 but the frame index says 32x24"):
        read_frame(frame_row("s", "1", color, K, POSE, 32, 24))


def test_decode_matrix_reads_text_and_refuses_wrong_shape():
    text = b"1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"
    np.testing.assert_array_equal(decode_matrix(text, (4, 4), "s", "p.txt"), np.eye(4))
    np.testing.assert_array_equal(decode_matrix(text, (3, 3), "s", "k.txt"), np.eye(3))  # 4x4 K file
    with pytest.raises(InputError, match="p.txt holds a 1x3 matrix, expected 4x4"):
        decode_matrix(b"1 2 3\n", (4, 4), "s", "p.txt")
    with pytest.raises(InputError, match="not a numeric matrix"):
        decode_matrix(b"a b\n", (4, 4), "s", "p.txt")
