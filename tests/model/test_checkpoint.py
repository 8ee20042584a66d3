import io

import pytest
import torch

import gfpipe
from gfpipe.checkpoint import FORMAT_VERSION, CheckpointError
from gfpipe.config import Preprocessing
from gfpipe.model import GFNet, GFNetConfig, ModelCard


def tiny_model() -> GFNet:
    torch.manual_seed(0)
    cfg = GFNetConfig(backbone="tiny", tiny_width=4, num_classes=3, input_size=64, patch_size=32, T=3)
    card = ModelCard(
        class_names=("cat", "dog", "eel"),
        preprocessing=Preprocessing(resize=72, crop=64, interpolation="bicubic"),
        calibration={"confidences": torch.rand(10, 3), "source": "unit test"},
        provenance={"run": "test"},
    )
    model = GFNet(cfg, card)
    for buf in model.buffers():  # non-default running stats, so the round trip checks them too
        if buf.dtype.is_floating_point:
            buf.add_(torch.rand_like(buf))
    return model.eval()


def saved(model: GFNet) -> bytes:
    buf = io.BytesIO()
    gfpipe.save_checkpoint(model, buf)
    return buf.getvalue()


def raw_payload(model: GFNet) -> dict:
    return torch.load(io.BytesIO(saved(model)), weights_only=True)


def resave(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def test_round_trip_is_exact(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.pt"
    gfpipe.save_checkpoint(model, str(path))
    loaded = gfpipe.load_checkpoint(str(path))
    assert loaded.config == model.config
    assert loaded.card.class_names == model.card.class_names
    assert loaded.card.preprocessing == model.card.preprocessing
    assert torch.equal(loaded.card.calibration["confidences"], model.card.calibration["confidences"])
    assert loaded.card.provenance["run"] == "test"
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.anytime(x), loaded.anytime(x))
    # file:// URIs are the same file
    assert gfpipe.load_checkpoint(f"file://{path}").config == model.config


def test_file_is_weights_only_and_self_describing():
    payload = raw_payload(tiny_model())
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["arch"]["backbone"] == "tiny" and payload["class_names"] == ["cat", "dog", "eel"]
    assert payload["step_costs"] == gfpipe.step_costs(tiny_model())
    assert payload["preprocessing"]["resize"] == 72


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda p: p["state_dict"].pop("policy.actor.0.weight"), r"missing tensors: policy\.actor\.0\.weight"),
        (lambda p: p["state_dict"].__setitem__("extra.weight", torch.zeros(1)), r"unexpected tensors: extra\.weight"),
        (
            lambda p: p["state_dict"].__setitem__("classifier.fc.bias", torch.zeros(4)),
            r"mis-shaped tensors: classifier\.fc\.bias \(4,\) \(expected \(3,\)\)",
        ),
        (lambda p: p.__setitem__("format_version", 99), "format version 99"),
        (lambda p: p.pop("state_dict"), "missing the 'state_dict' entry"),
        (lambda p: p["arch"].__setitem__("backbon", "tiny"), "unknown config key arch.backbon"),
        (lambda p: p.__setitem__("format", "something-else"), "neither a gfpipe checkpoint"),
    ],
)
def test_bad_files_are_refused_with_a_reason(mutate, message):
    payload = raw_payload(tiny_model())
    mutate(payload)
    with pytest.raises(CheckpointError, match=message):
        gfpipe.load_checkpoint(resave(payload))


@pytest.mark.parametrize("data", [b"", b"\x00garbage" * 100, b"<html>not a model</html>"])
def test_garbage_bytes_are_refused(data):
    with pytest.raises(CheckpointError, match="could not be read as a weights-only torch checkpoint"):
        gfpipe.load_checkpoint(data)


def test_truncated_file_is_refused():
    data = saved(tiny_model())
    with pytest.raises(CheckpointError, match="truncated"):
        gfpipe.load_checkpoint(data[: len(data) // 2])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        gfpipe.load_checkpoint(str(tmp_path / "nope.pt"))


def test_pickled_code_is_never_run():
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    buf = io.BytesIO()
    torch.save({"format": "gfpipe-checkpoint", "evil": Evil()}, buf)
    with pytest.raises(CheckpointError, match="weights-only"):
        gfpipe.load_checkpoint(buf.getvalue())


def test_class_names_override_and_others_refused():
    data = saved(tiny_model())
    assert gfpipe.load_checkpoint(data, class_names=["a", "b", "c"]).class_names == ("a", "b", "c")
    with pytest.raises(CheckpointError, match="only class_names may be given"):
        gfpipe.load_checkpoint(data, patch_size=16)
    with pytest.raises(CheckpointError, match="2 class names given for a model with 3 classes"):
        gfpipe.load_checkpoint(data, class_names=["a", "b"])
