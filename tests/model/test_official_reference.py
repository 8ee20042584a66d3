"""gfpipe reproduces the official GFNet forward pass through `load_checkpoint` of official files."""

import io

import pytest
import torch

import gfpipe
from gfpipe.checkpoint import CheckpointError

from .official_files import official_checkpoint, reference_input, reference_vectors

CASES = [
    ("resnet50", "resnet50_p96_T5_seed0.json"),
    ("densenet121", "densenet121_p96_T5_seed0.json"),
    ("regnety_600m", "regnety_600m_p96_T5_seed0.json"),
    ("mobilenetv3_large_100", "mobilenetv3_large_100_p96_T3_seed0.json"),
    ("mobilenetv3_large_100", "mobilenetv3_large_100_p96_T3_seed0_rule2.json"),
    ("mobilenetv3_large_125", "mobilenetv3_large_125_p128_T3_seed0_rule2.json"),
    ("efficientnet_b2", "efficientnet_b2_p128_T4_seed0_rule2.json"),
]


def _file(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


@pytest.mark.parametrize("arch,vectors", CASES)
def test_reproduces_official_forward(arch, vectors, tmp_path):
    ref = reference_vectors(vectors)
    path = tmp_path / f"{arch}.pth.tar"
    path.write_bytes(_file(official_checkpoint(arch, ref["patch_size"], ref["T"], rule=ref.get("rule", 1))))
    model = gfpipe.load_checkpoint(str(path))
    assert ref["T"] == model.config.T and model.config.patch_size == ref["patch_size"]
    assert model.config.input_size == ref.get("image_size", 224)
    x = reference_input(ref["seed"], ref["n"], ref.get("image_size", 224))
    with torch.no_grad():
        logits, actions = model.anytime(x, return_locations=True)
    log_softmax = torch.log_softmax(logits, dim=-1)
    expected = torch.tensor(ref["log_softmax"])
    assert log_softmax.shape == expected.shape
    assert (log_softmax - expected).abs().max().item() < 1e-4
    assert log_softmax.argmax(-1).tolist() == ref["argmax"]
    assert (actions - torch.tensor(ref["actions"])).abs().max().item() < 1e-5


def test_training_script_files_need_arch_patch_and_T():
    ref = reference_vectors("mobilenetv3_large_100_p96_T3_seed0.json")
    raw = _file(official_checkpoint("mobilenetv3_large_100", metadata=False))
    with pytest.raises(CheckpointError, match="without metadata"):
        gfpipe.load_checkpoint(raw)
    model = gfpipe.load_checkpoint(raw, arch="mobilenetv3_large_100", patch_size=96, T=3)
    x = reference_input(ref["seed"], ref["n"])
    with torch.no_grad():
        out = torch.log_softmax(model.anytime(x), -1)
    assert (out - torch.tensor(ref["log_softmax"])).abs().max().item() < 1e-4


def test_imported_models_label_by_index_unless_names_given(tmp_path):
    raw = _file(official_checkpoint("mobilenetv3_large_100", T=2))
    assert gfpipe.load_checkpoint(raw).class_names[:3] == ("0", "1", "2")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class {i}" for i in range(1000)))
    model = gfpipe.load_checkpoint(raw, class_names=str(names))
    assert model.class_names[999] == "class 999"


def test_conflicting_override_is_refused():
    raw = _file(official_checkpoint("resnet50", patch_size=96, T=5))
    with pytest.raises(CheckpointError, match="patch_size is 96 but 128 was passed"):
        gfpipe.load_checkpoint(raw, patch_size=128)


def test_missing_official_tensor_is_named():
    ckpt = official_checkpoint("mobilenetv3_large_100", T=3)
    del ckpt["policy"]["actor.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors: policy\.actor\.0\.weight"):
        gfpipe.load_checkpoint(_file(ckpt))
