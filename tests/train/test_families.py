"""Every family's training recipe (shared/TRAINING_SPEC.md) comes from its config, named as
`gfpipe train --config NAME` takes it, and every stage of that recipe trains exactly its parts
for a few batches on CPU (plain torch, no Ray; small inputs, the recipe's own values)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch

from gfpipe.checkpoint import OFFICIAL_PREPROCESSING
from gfpipe.commands import train as train_command
from gfpipe.config import ConfigError
from gfpipe.model import GFNet
from gfpipe.model.backbones import BACKBONES
from gfpipe.train.config import FAMILY_PRESETS, family_of, find_config, load_config, resolve_config
from gfpipe.train.loops import Trainer

ROOT = Path(__file__).resolve().parents[2]

# TRAINING_SPEC.md, independently of gfpipe's presets: lambda (Stage I, "lambda"), encoder LR and
# weight decay (Stage I, "Optimiser", "Schedule"), epochs of stages I and III (Stage I
# "Schedule"; Stage III: none for EfficientNet), frozen f_G (Stage I, "Trained"), dropout and
# drop-connect (Stage I, "Dropout"), the glance's interpolation (Known problems: inference.py
# glances bilinear for DenseNet/RegNet) and the classifier (Families).
RECIPES = {
    "resnet": dict(lam=1.0, lr=0.01, wd=1e-4, epochs=(60, 60), frozen=False, drop=(0.0, 0.0), glance="bicubic"),
    "densenet": dict(lam=1.0, lr=0.01, wd=1e-4, epochs=(60, 60), frozen=False, drop=(0.0, 0.0), glance="bilinear"),
    "regnety": dict(lam=1.0, lr=0.02, wd=5e-5, epochs=(60, 60), frozen=False, drop=(0.0, 0.0), glance="bilinear"),
    "mobilenetv3": dict(lam=5.0, lr=0.005, wd=1e-4, epochs=(90, 90), frozen=True, drop=(0.2, 0.2), glance="bicubic"),
    "efficientnet": dict(lam=5.0, lr=0.005, wd=1e-4, epochs=(30, 0), frozen=True, drop=(0.3, 0.2), glance="bicubic"),
}
CLASSIFIER = {"resnet": "gru", "densenet": "gru", "regnety": "gru", "mobilenetv3": "cascade", "efficientnet": "cascade"}
# config name (configs/NAME.yaml) -> its family
CONFIGS = {
    "resnet50": "resnet",
    "densenet121": "densenet",
    "regnety_600m": "regnety",
    "mobilenetv3": "mobilenetv3",
    "mobilenetv3_large_125": "mobilenetv3",
    "efficientnet_b2": "efficientnet",
}
SMALL = [  # a few 64 px images per stage; everything else as the config says
    "model.input_size=64",
    "model.patch_size=32",
    "model.T=2",
    "model.num_classes=10",
    "preprocessing.resize=64",
    "preprocessing.crop=64",
    "batch_size=4",
    "stage0.epochs=1",
    "scaling.num_workers=1",  # this process is the one worker
]
PARTS = ("global_encoder", "local_encoder", "classifier", "policy")


def assert_recipe(cfg, family: str) -> None:
    recipe, model = RECIPES[family], cfg.model.resolved()
    optimiser = (recipe["lam"], recipe["lr"], recipe["wd"])  # lambda, encoder LR, weight decay
    for stage, epochs in (("stage1", recipe["epochs"][0]), ("stage3", recipe["epochs"][1])):
        settings = getattr(cfg, stage)
        assert settings.epochs == epochs, stage
        assert (settings.aux_weight, settings.encoder_lr, settings.weight_decay) == optimiser, stage
        assert (settings.optimizer, settings.momentum, settings.freeze_global) == ("sgd", 0.9, recipe["frozen"])
    assert (cfg.stage1.classifier_lr, cfg.stage3.classifier_lr) == (0.1, 0.01)
    assert cfg.stage1.locations == "random" and cfg.stage3.locations == "policy"
    assert (cfg.stage0.encoder_lr, cfg.stage0.weight_decay) == optimiser[1:] and not cfg.stage0.freeze_global
    assert (cfg.stage2.epochs, cfg.stage2.lr, cfg.stage2.std, cfg.stage2.gamma) == (15, 3e-4, 0.1, 0.7)
    assert (model.dropout, model.drop_connect) == recipe["drop"]
    assert model.glance_interpolation == recipe["glance"] and model.classifier == CLASSIFIER[family]
    assert model.encoder_heads


@pytest.mark.parametrize("name", CONFIGS)
def test_each_family_config_holds_the_papers_recipe(name):
    cfg = load_config(name)
    assert family_of(cfg.model.backbone) == CONFIGS[name]
    assert_recipe(cfg, CONFIGS[name])
    assert cfg.batch_size == 256 and cfg.stage0.epochs == 0
    assert cfg.preprocessing.crop == cfg.model.input_size  # what `gfpipe train` checks before Ray
    if cfg.model.backbone in OFFICIAL_PREPROCESSING:  # EfficientNet trains at its own size, as evaluated
        assert cfg.preprocessing == OFFICIAL_PREPROCESSING[cfg.model.backbone]
    else:
        prep = cfg.preprocessing
        assert (cfg.model.input_size, prep.resize, prep.interpolation) == (224, 256, "bilinear")


def test_every_registered_backbone_has_a_training_recipe():
    for name in BACKBONES:
        family = family_of(name)
        assert name.startswith(family) and family in FAMILY_PRESETS, name
        if family != "tiny":
            assert_recipe(resolve_config({"model": {"backbone": name}}), family)
    assert {family_of(n) for n in ("resnet18", "regnety_1.6g", "densenet201", "efficientnet_b3")} == {
        "resnet", "regnety", "densenet", "efficientnet",
    }  # fmt: skip
    assert family_of("mobilenetv3_large_125") == "mobilenetv3" and family_of("tiny") == "tiny"
    assert resolve_config({}).stage1 == resolve_config({"model": {"backbone": "resnet18"}}).stage1  # tiny: ResNet's


def test_a_backbone_without_a_recipe_is_refused_not_trained_as_resnet(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown backbone 'vgg16'; known backbones: densenet121"):
        resolve_config({"model": {"backbone": "vgg16"}})
    monkeypatch.delitem(FAMILY_PRESETS, "regnety")
    with pytest.raises(ConfigError, match=r"'regnety_600m' has no training recipe; families with one: densenet, "):
        resolve_config({"model": {"backbone": "regnety_600m"}})


def test_configs_by_name(tmp_path, monkeypatch):
    assert find_config("densenet121") == str(ROOT / "configs" / "densenet121.yaml")
    assert load_config("densenet121") == load_config(str(ROOT / "configs" / "densenet121.yaml"))
    assert find_config("configs/x.yaml") == "configs/x.yaml" and find_config("x.yml") == "x.yml"  # paths as given
    with pytest.raises(ConfigError, match=r"no config named 'densenet' in .*named configs: demo, densenet121, "):
        load_config("densenet")
    monkeypatch.chdir(tmp_path)  # from elsewhere: the checkout's configs/, unless ./configs has the name
    assert find_config("efficientnet_b2") == str(ROOT / "configs" / "efficientnet_b2.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "efficientnet_b2.yaml").write_text("model: {backbone: efficientnet_b2, T: 3}\n")
    assert load_config("efficientnet_b2").model.T == 3
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    with pytest.raises(ConfigError, match="data.train and data.val are required"):  # the name loaded
        train_command.run(parser.parse_args(["--config", "regnety_600m"]))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_each_family_trains_its_stages_on_cpu(name):
    family = CONFIGS[name]
    cfg = load_config(name, [*SMALL, "data.train=unused", "data.val=unused"]).check()
    assert_recipe(cfg, family)  # the small run keeps the family's recipe
    torch.manual_seed(0)
    t = Trainer(cfg, GFNet(cfg.model), "cpu")
    stages = [stage for stage, _ in t.plan()]
    assert stages == (["stage0", "stage1", "stage2"] if family == "efficientnet" else list(Trainer.STAGES))
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8), torch.randint(0, 10, (4,), generator=g))
        for _ in range(2)
    ]
    frozen = RECIPES[family]["frozen"]
    for stage in stages:
        parts = {part: snapshot(getattr(t.model, part)) for part in PARTS}
        cascade = cfg.model.resolved().classifier == "cascade"
        metrics = t.train_epoch(stage, 0, batches)
        assert metrics["images"] == 8 and math.isfinite(metrics["loss_sum"]), stage
        moved = {part for part in PARTS if changed(parts[part], getattr(t.model, part))}
        if stage == "stage0":
            expected = {"global_encoder"}
        elif stage == "stage2":
            expected = {"policy"}
        else:
            expected = {"local_encoder", "classifier"} | (set() if frozen else {"global_encoder"})
        assert moved == expected, (stage, moved)
        if cascade and stage in ("stage1", "stage3"):  # step 1 predicts with the frozen encoder's own head
            assert frozen and torch.equal(t.model.classifier.fc_1.weight, t.model.global_encoder.head.weight), stage
            assert torch.equal(t.model.classifier.fc_1.bias, t.model.global_encoder.head.bias), stage
        if stage != "stage2":
            settings = getattr(cfg, stage)
            lrs = [group["lr"] for group in t.optimizer.param_groups]
            assert lrs == (
                [settings.encoder_lr] if stage == "stage0" else [settings.encoder_lr, settings.classifier_lr]
            )
            assert {group["weight_decay"] for group in t.optimizer.param_groups} == {settings.weight_decay}
        else:
            assert [group["lr"] for group in t.optimizer.param_groups] == [cfg.stage2.lr]
