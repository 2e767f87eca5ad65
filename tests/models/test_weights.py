"""Checkpoints: safetensors and weights-only torch files through fsspec (local, s3://), corrupt ones refused."""

import io
import pickle
import warnings

import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.models import build_teacher, build_text_encoder
from sas_ray.models.weights import load_into, parse_checkpoint, read_checkpoint, write_checkpoint


@pytest.fixture(scope="module")
def tiny_dense():
    return build_teacher("openclip-dense", tiny=True, flip=False)


def _frames(seed=0):
    return torch.randint(0, 256, (1, 16, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_local_safetensors_round_trip_rebuilds_the_same_teacher(tmp_path, tiny_dense):
    url = str(tmp_path / "ckpt" / "tiny.safetensors")
    sha = write_checkpoint(tiny_dense.clip.model.state_dict(), url, metadata={"arch": "tiny"})
    loaded = build_teacher("openclip-dense", weights=url, arch="tiny", flip=False)
    assert loaded.text_space == f"openclip:tiny:{sha[:12]}"
    torch.testing.assert_close(loaded.encode(_frames()), tiny_dense.encode(_frames()))
    assert read_checkpoint(url).metadata == {"arch": "tiny"}


def test_s3_round_trip_gives_teacher_and_text_encoder_one_space(s3_bucket, tiny_dense):
    root, options = s3_bucket
    url = f"{root}/clip/tiny.safetensors"
    write_checkpoint(tiny_dense.clip.model.state_dict(), url, options)
    text = build_text_encoder("openclip-text", weights=url, arch="tiny", storage_options=options)
    teacher = build_teacher("openclip-dense", weights=url, arch="tiny", storage_options=options, flip=False)
    assert text.text_space == teacher.text_space != tiny_dense.text_space
    tiny_text = build_text_encoder("openclip-text", tiny=True)
    torch.testing.assert_close(text.encode(["a chair in a scene"]), tiny_text.encode(["a chair in a scene"]))


def test_weights_only_torch_checkpoint_unwraps_training_state():
    state = {"module.w": torch.arange(6.0).reshape(2, 3), "module.b": torch.ones(2)}
    buf = io.BytesIO()
    torch.save({"epoch": 3, "state_dict": state}, buf)
    checkpoint = parse_checkpoint(buf.getvalue(), "mem://x.pt")
    assert set(checkpoint.state) == {"w", "b"}
    torch.testing.assert_close(checkpoint.state["w"], state["module.w"])


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_code_objects_is_refused():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1), "x": _Payload()}, buf)
    with pytest.raises(InputError, match="evil.pt.*weights-only"):
        parse_checkpoint(buf.getvalue(), "evil.pt")
    with pytest.raises(InputError, match="old.pkl"):
        parse_checkpoint(pickle.dumps({"w": _Payload()}, protocol=2), "old.pkl")


def test_corrupt_checkpoints_name_the_file(tmp_path, tiny_dense):
    url = str(tmp_path / "good.safetensors")
    write_checkpoint(tiny_dense.clip.model.state_dict(), url)
    blob = open(url, "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated.safetensors.*not a valid safetensors"):
        build_teacher("openclip-dense", weights=str(truncated), arch="tiny")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all")
    with pytest.raises(InputError, match="garbage.bin.*neither safetensors nor a torch checkpoint"):
        read_checkpoint(str(garbage))
    with pytest.raises(InputError, match="missing.safetensors.*no such file"):
        read_checkpoint(str(tmp_path / "missing.safetensors"))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    url = str(tmp_path / "small.safetensors")
    write_checkpoint({"weight": torch.zeros(3, 5), "extra": torch.zeros(1)}, url)
    with pytest.raises(InputError, match=r"small.safetensors does not fit Linear: 1 missing.*1 unexpected.*"
                                         r"1 shape mismatches.*weight: \(3, 5\) vs \(3, 4\)"):
        load_into(torch.nn.Linear(4, 3), read_checkpoint(url))


def test_safetensors_checkpoints_are_views_equal_to_safetensors_own_load():
    """Checkpoint tensors are views of the file's bytes (no copy of a checkpoint's GBs), equal to what safetensors
    itself loads, every dtype and an empty tensor; a header whose offsets overrun the data is refused."""
    import json

    from safetensors.torch import load, save

    g = torch.Generator().manual_seed(0)
    state = {"f32": torch.randn(3, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
             "bf16": torch.randn(2, 2, generator=g).bfloat16(), "i64": torch.arange(-4, 5),
             "u8": torch.arange(9, dtype=torch.uint8), "flag": torch.tensor([True, False, True]),
             "none": torch.zeros(0, 4)}
    blob = save(state)
    ours, theirs = parse_checkpoint(blob, "ckpt.safetensors").state, load(blob)
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a view of immutable bytes
        base = torch.frombuffer(blob, dtype=torch.uint8).data_ptr()
    assert all(base <= ours[k].data_ptr() < base + len(blob) for k in ours if ours[k].numel())  # inside the bytes
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["f32"]["data_offsets"][1] += 4  # one float more than the shape holds
    bad = json.dumps(header, separators=(",", ":")).encode()
    assert len(bad) <= n  # the header keeps its length (safetensors pads it with spaces)
    bad = bad.ljust(n)
    with pytest.raises(InputError, match="ckpt.safetensors: not a valid safetensors file: f32: offsets"):
        parse_checkpoint(blob[:8] + bad + blob[8 + n:], "ckpt.safetensors")


def test_a_checkpoint_hashes_its_bytes_once_and_only_when_its_id_is_asked(monkeypatch):
    """SAM's checkpoint is never hashed in an actor (only CLIP's id names a text space): the sha256 is lazy, and it
    is the sha256 of the file's bytes, for both formats."""
    import hashlib

    from safetensors.torch import save

    from sas_ray.models import weights

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    real, hashed = hashlib.sha256, []
    monkeypatch.setattr(weights.hashlib, "sha256", lambda data: hashed.append(len(data)) or real(data))
    for blob in (save({"w": torch.ones(3)}), buf.getvalue()):
        checkpoint = parse_checkpoint(blob, "x")
        torch.testing.assert_close(checkpoint.state["w"], torch.ones(3))
        assert hashed == []
        assert (checkpoint.id, checkpoint.sha256) == (real(blob).hexdigest()[:12], real(blob).hexdigest())
        assert hashed == [len(blob)]
        hashed.clear()
