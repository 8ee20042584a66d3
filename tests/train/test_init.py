"""Where training starts: backbone files for the encoders, a GFNet checkpoint to fine-tune."""

from __future__ import annotations

import pytest
import torch

import gfpipe
from gfpipe.model import GFNet, GFNetConfig
from gfpipe.model.backbones import build_backbone
from gfpipe.train.config import InitConfig
from gfpipe.train.init import initialise


def model(classes: int = 4, seed: int = 0) -> GFNet:
    torch.manual_seed(seed)
    return GFNet(
        GFNetConfig(
            backbone="tiny", tiny_width=4, num_classes=classes, input_size=64, patch_size=32, T=3, encoder_heads=True
        )
    )


def test_backbone_weights_go_into_both_encoders_and_an_imagenet_head_is_skipped(tmp_path):
    torch.manual_seed(5)
    backbone = build_backbone("tiny", head_classes=1000, width=4)
    torch.save({f"module.{k}": v for k, v in backbone.state_dict().items()}, tmp_path / "backbone.pth")
    target = model()
    head_before = target.local_encoder.fc.weight.clone()
    notes = initialise(target, InitConfig(encoders=str(tmp_path / "backbone.pth")))
    for encoder in (target.global_encoder, target.local_encoder):
        for key, value in backbone.state_dict().items():
            if not key.startswith("fc."):
                assert torch.equal(encoder.state_dict()[key], value), key
    assert torch.equal(target.local_encoder.fc.weight, head_before)  # 1000 classes do not fit 4
    assert any("head skipped" in note for note in notes)


def test_a_global_encoder_file_overrides_the_shared_one(tmp_path):
    torch.manual_seed(1)
    shared, glance = build_backbone("tiny", width=4), build_backbone("tiny", width=4)
    torch.save(shared.state_dict(), tmp_path / "shared.pth")
    torch.save(glance.state_dict(), tmp_path / "glance.pth")
    target = model()
    initialise(target, InitConfig(encoders=str(tmp_path / "shared.pth"), global_encoder=str(tmp_path / "glance.pth")))
    key = "features.1.weight"
    assert torch.equal(target.global_encoder.state_dict()[key], glance.state_dict()[key])
    assert torch.equal(target.local_encoder.state_dict()[key], shared.state_dict()[key])


def test_a_checkpoint_with_other_classes_fine_tunes_everything_but_the_class_layers(tmp_path):
    source = model(classes=7, seed=3)
    gfpipe.save_checkpoint(source, str(tmp_path / "source.pt"))
    target = model(classes=4)
    fresh_fc = target.classifier.fc.weight.clone()
    initialise(target, InitConfig(checkpoint=str(tmp_path / "source.pt")))
    assert torch.equal(target.policy.actor[0].weight, source.policy.actor[0].weight)
    assert torch.equal(target.classifier.rnn.weight_ih_l0, source.classifier.rnn.weight_ih_l0)
    assert torch.equal(target.local_encoder.features[1].weight, source.local_encoder.features[1].weight)
    assert torch.equal(target.classifier.fc.weight, fresh_fc)  # 7 classes do not fit 4


def test_weights_that_do_not_fit_are_refused_by_name(tmp_path):
    torch.save({"features.1.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"features\.1\.weight .*mis-shaped|missing"):
        initialise(model(), InitConfig(encoders=str(tmp_path / "wrong.pth")))
    other = GFNet(GFNetConfig(backbone="resnet18", num_classes=4, input_size=64, patch_size=32, T=2))
    gfpipe.save_checkpoint(other, str(tmp_path / "resnet.pt"))
    with pytest.raises(ValueError, match="resnet18 GFNet; this run trains tiny"):
        initialise(model(), InitConfig(checkpoint=str(tmp_path / "resnet.pt")))
