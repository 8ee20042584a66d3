"""GFNet in plain torch: backbones, classifier, patch policy, patch extraction, step API."""

from gfpipe.model.backbones import BACKBONES, Backbone, build_backbone
from gfpipe.model.gfnet import GFNet, GFNetConfig, GFState, ModelCard
from gfpipe.model.patches import extract_patches, patch_corners
from gfpipe.model.policy import PatchPolicy, PolicyOutput

__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "GFNet",
    "GFNetConfig",
    "GFState",
    "ModelCard",
    "extract_patches",
    "patch_corners",
    "PatchPolicy",
    "PolicyOutput",
]
