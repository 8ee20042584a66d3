"""Glance-and-Focus Network with an explicit per-image state, so early exit can be real.

A glance step runs the global encoder f_G on a downsampled copy of the image; each focus step
runs the policy pi on the previous step's feature map to choose a patch, then the local encoder
f_L on that full-resolution patch; after every step the classifier f_C gives logits.

The step API takes and returns a `GFState` whose tensors are indexed by image, so the engine can
take the images that did not exit out of one batch and stack them with hard images from other
batches before the next step. The policy is evaluated lazily at the start of a focus step, on
the images that actually continue: an image that exits after step t has spent exactly the cost
of steps 1..t and nothing for a location it will never use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfpipe.config import ConfigError, Preprocessing
from gfpipe.model.backbones import BACKBONES, build_backbone
from gfpipe.model.classifier import CascadeClassifier, GRUClassifier
from gfpipe.model.patches import extract_patches, patch_corners
from gfpipe.model.policy import PatchPolicy, PolicyOutput

# Per-backbone defaults for the fields left as None in GFNetConfig (the official choices for each
# published family; small ones for the tiny test/demo backbone). Two classifier/policy forms:
# a GRU classifier with the flatten-form policy (ResNet, DenseNet), and the cascade with the
# conv-form policy (MobileNet-V3, EfficientNet).
_GRU_FLATTEN = dict(
    classifier="gru", classifier_hidden=1024, policy_conv_channels=0, policy_hidden=1024, policy_mlp_width=2048
)
_CASCADE_CONV = dict(
    classifier="cascade", classifier_hidden=0, policy_conv_channels=32, policy_hidden=256, policy_mlp_width=0
)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet": dict(**_GRU_FLATTEN, dropout=0.0, drop_connect=0.0),
    "densenet": dict(**_GRU_FLATTEN, dropout=0.0, drop_connect=0.0),
    "mobilenetv3": dict(**_CASCADE_CONV, dropout=0.2, drop_connect=0.2),
    "efficientnet": dict(**_CASCADE_CONV, dropout=0.3, drop_connect=0.2),  # TRAINING_SPEC
    # RegNet-Y: GRU classifier, conv-form policy, step-1 logits from the global encoder's `fc`
    # (the official inference.py; its train.py uses the GRU's, see GFNetConfig.glance_logits).
    "regnety": dict(
        _CASCADE_CONV,
        classifier="gru",
        classifier_hidden=1024,
        glance_logits="encoder_head",
        dropout=0.0,
        drop_connect=0.0,
    ),
    "tiny": dict(
        classifier="gru",
        classifier_hidden=128,
        policy_conv_channels=16,
        policy_hidden=128,
        policy_mlp_width=0,
        dropout=0.0,
        drop_connect=0.0,
    ),
}


def _family(backbone: str) -> str:
    return next(f for f in _FAMILY_DEFAULTS if backbone.startswith(f))


@dataclass(frozen=True)
class GFNetConfig:
    """Architecture of one GFNet. Fields left None take the backbone family's default.

    `glance_logits` says where step 1's logits come from. "classifier": f_C, as at every later
    step (ResNet, DenseNet, the tiny backbone; the cascade's `fc_1` is its own layer).
    "encoder_head": the global encoder's own linear head on the glance's pooled features, as the
    official `inference.py` does for RegNet (the family's default); f_C still takes the glance's
    features into its state, so steps >= 2 are the same either way. The global encoder is then
    always built with its head (whatever `encoder_heads` says), the step-1 cost counts it, and
    training's step-1 loss scores that head (the official `train.py` scores the GRU instead).
    """

    backbone: str = "tiny"
    num_classes: int = 10
    input_size: int = 224
    patch_size: int = 96
    glance_size: int | None = None  # defaults to patch_size
    T: int = 5
    tiny_width: int = 16
    classifier: str | None = None  # "gru" | "cascade"
    classifier_hidden: int | None = None
    policy_conv_channels: int | None = None  # 0 = flatten-form state encoder
    policy_hidden: int | None = None
    policy_mlp_width: int | None = None
    glance_interpolation: str = "bicubic"
    glance_logits: str | None = None  # "classifier" | "encoder_head" (above); None: family default or "classifier"
    # Training only (identity in eval, so inference and the engine never see them):
    encoder_heads: bool = False  # each encoder's own linear head, for the auxiliary loss of Eq. 3
    dropout: float | None = None  # on the pooled features before the classifier and the heads
    drop_connect: float | None = None  # stochastic depth in the encoders' residual blocks (MobileNet, EfficientNet)

    def resolved(self) -> GFNetConfig:
        """A copy with every None replaced by its default; checks the values."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; known backbones: {', '.join(sorted(BACKBONES))}")
        defaults = _FAMILY_DEFAULTS[_family(self.backbone)]
        values = dataclasses.asdict(self)
        for key, default in defaults.items():
            if values[key] is None:
                values[key] = default
        if values["glance_size"] is None:
            values["glance_size"] = self.patch_size
        if values["glance_logits"] is None:
            values["glance_logits"] = "classifier"
        cfg = GFNetConfig(**values)
        cfg._check()
        return cfg

    def _check(self) -> None:
        if self.T < 1:
            raise ConfigError(f"T must be >= 1, got {self.T}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0 < self.patch_size <= self.input_size:
            raise ConfigError(f"patch_size {self.patch_size} must be between 1 and input_size {self.input_size}")
        if not 0 < self.glance_size <= self.input_size:
            raise ConfigError(f"glance_size {self.glance_size} must be between 1 and input_size {self.input_size}")
        if self.classifier not in ("gru", "cascade"):
            raise ConfigError(f"classifier must be 'gru' or 'cascade', got {self.classifier!r}")
        if self.classifier == "gru" and self.classifier_hidden < 1:
            raise ConfigError("a 'gru' classifier needs classifier_hidden >= 1")
        if not self.policy_conv_channels and self.policy_mlp_width < 1:
            raise ConfigError("a flatten-form policy (policy_conv_channels=0) needs policy_mlp_width >= 1")
        if self.glance_logits not in ("classifier", "encoder_head"):
            raise ConfigError(f"glance_logits must be 'classifier' or 'encoder_head', got {self.glance_logits!r}")
        if self.glance_interpolation not in ("bilinear", "bicubic", "area", "nearest"):
            raise ConfigError(
                f"glance_interpolation {self.glance_interpolation!r} is not one of bilinear, bicubic, area, nearest"
            )
        for name in ("dropout", "drop_connect"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class ModelCard:
    """What travels with a model besides weights: labels, preprocessing, calibration, provenance."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    # {"confidences": (N, T) float tensor of max-softmax per step, optional "predictions"
    # (N, T) long, "labels" (N,) long, "source": str}; set by the calibration pass.
    calibration: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def default(cfg: GFNetConfig) -> ModelCard:
        resize = round(cfg.input_size / 0.875)
        return ModelCard(
            class_names=tuple(str(i) for i in range(cfg.num_classes)),
            preprocessing=Preprocessing(resize=resize, crop=cfg.input_size),
        )


@dataclass
class GFState:
    """Per-image state between steps. Every tensor's first dim indexes images.

    `step` is shared by all images of a state (the number of steps done): images can only be
    batched with images at the same step, since the cascade classifier's state grows with it.
    """

    step: int
    classifier: Tensor  # (N, H_c) GRU hidden, or (N, step * F) cascade features
    policy: Tensor  # (N, H_p) policy GRU hidden (zeros before the first focus step)
    features: Tensor  # (N, C, h, w) feature map of the last step: the policy's input
    glimpses: Tensor  # (N, step - 1, 2) actions in [0, 1] of the patches used so far
    pooled: Tensor  # (N, F) pooled features of the last step (its encoder head's input)

    def __len__(self) -> int:
        return self.classifier.shape[0]

    def _map(self, fn) -> GFState:
        return GFState(
            self.step, fn(self.classifier), fn(self.policy), fn(self.features), fn(self.glimpses), fn(self.pooled)
        )

    def index(self, idx: Tensor | slice | Sequence[int]) -> GFState:
        """The state of a subset of images (bool mask, index tensor or slice)."""
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device | str) -> GFState:
        return self._map(lambda t: t.to(device, non_blocking=True))

    @staticmethod
    def cat(states: Sequence[GFState]) -> GFState:
        """Stack the images of several states that are at the same step."""
        if not states:
            raise ValueError("GFState.cat needs at least one state")
        steps = {s.step for s in states}
        if len(steps) != 1:
            raise ValueError(f"cannot stack states at different steps {sorted(steps)}")
        if len(states) == 1:
            return states[0]
        return GFState(
            states[0].step,
            torch.cat([s.classifier for s in states]),
            torch.cat([s.policy for s in states]),
            torch.cat([s.features for s in states]),
            torch.cat([s.glimpses for s in states]),
            torch.cat([s.pooled for s in states]),
        )


class GFNet(nn.Module):
    """Global encoder, local encoder, classifier and patch policy, with a glance/focus step API."""

    def __init__(self, config: GFNetConfig, card: ModelCard | None = None):
        super().__init__()
        cfg = config.resolved()
        self.config = cfg
        self.card = card or ModelCard.default(cfg)
        if len(self.card.class_names) != cfg.num_classes:
            raise ConfigError(
                f"{len(self.card.class_names)} class names given for a model with {cfg.num_classes} classes"
            )
        heads = cfg.num_classes if cfg.encoder_heads else None
        # glance_logits="encoder_head" reads the global encoder's head at inference, so that one
        # head exists whether or not the training-only heads were asked for.
        global_heads = cfg.num_classes if cfg.glance_logits == "encoder_head" else heads
        self.global_encoder = build_backbone(cfg.backbone, global_heads, cfg.tiny_width, cfg.drop_connect)
        self.local_encoder = build_backbone(cfg.backbone, heads, cfg.tiny_width, cfg.drop_connect)
        feat = self.global_encoder.feature_dim
        if cfg.classifier == "gru":
            self.classifier = GRUClassifier(feat, cfg.classifier_hidden, cfg.num_classes)
        else:
            self.classifier = CascadeClassifier(feat, cfg.num_classes, cfg.T)
        # The policy reads the feature map of a glance (first focus step) or of a patch (later
        # steps); both must have the same shape, which holds when glance_size == patch_size or
        # both round to the same map size.
        glance_map = self.global_encoder.map_size(cfg.glance_size)
        patch_map = self.local_encoder.map_size(cfg.patch_size)
        if cfg.T > 1 and glance_map != patch_map:
            raise ConfigError(
                f"glance_size {cfg.glance_size} gives a {glance_map}x{glance_map} feature map but "
                f"patch_size {cfg.patch_size} gives {patch_map}x{patch_map}; the policy reads both. "
                "Use sizes that give the same map (e.g. equal sizes)."
            )
        self.policy = PatchPolicy(
            self.global_encoder.map_channels,
            patch_map,
            cfg.policy_hidden,
            cfg.policy_conv_channels or None,
            cfg.policy_mlp_width,
        )

    # ----------------------------------------------------------------------------------------
    # Step API
    # ----------------------------------------------------------------------------------------

    def glance_input(self, images: Tensor) -> Tensor:
        """images (N, 3, S, S) -> the downsampled glance (N, 3, g, g).

        Without gradients (inference: the engine, evaluation) the small result is laid out
        channels-last, as the focus patches are (`extract_patches`): on a CPU the demo model's
        glance took 19% less time so. The resize itself reads NCHW, which it does fastest.
        Training keeps NCHW: the layout changes the convolutions' rounding (about 1e-6), and
        the training recipes and their tests were tuned without it.
        """
        g = self.config.glance_size
        if images.shape[-1] != g or images.shape[-2] != g:
            mode = self.config.glance_interpolation
            align = True if mode in ("bilinear", "bicubic") else None
            images = F.interpolate(images, size=(g, g), mode=mode, align_corners=align)
        if torch.is_grad_enabled():
            return images
        return images.contiguous(memory_format=torch.channels_last)

    def glance(self, images: Tensor) -> tuple[Tensor, GFState]:
        """Step 1 on images (N, 3, S, S) -> logits (N, K) and the state after step 1."""
        self._check_images(images)
        pooled, fmap = self.global_encoder(self.glance_input(images))  # (N, F), (N, C, h, w)
        pooled = F.dropout(pooled, self.config.dropout, self.global_encoder.training)  # as the encoder's own
        n = images.shape[0]
        logits, cls_state = self.classify(pooled, self.classifier.init_state(n, pooled), 1)
        state = GFState(
            step=1,
            classifier=cls_state,
            policy=self.policy.init_state(n, pooled),
            features=fmap,
            glimpses=pooled.new_zeros(n, 0, 2),
            pooled=pooled,
        )
        return logits, state

    def classify(self, pooled: Tensor, state: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """f_C at `step` on that step's pooled features (N, F) and classifier state -> logits
        (N, K) and the new classifier state.

        With `glance_logits="encoder_head"` the glance's logits are the global encoder's own
        head on its pooled features (the official RegNet `inference.py`), while f_C still takes
        the glance's features into its state, so steps >= 2 see the same history either way.
        This is the one place the choice is made: glance, focus and the cost counter call it.
        """
        if step == 1 and self.config.glance_logits == "encoder_head":
            return self.global_encoder.head(pooled), self.classifier.update(pooled, state)
        return self.classifier.step(pooled, state, step)

    def locate(self, state: GFState) -> PolicyOutput:
        """Run the policy on the state's feature map: where the next focus step looks.

        The feature map is detached: the policy learns from its own reward (stage II) and never
        pushes gradients into the encoders."""
        return self.policy(state.features.detach(), state.policy)

    def random_location(self, state: GFState, generator: torch.Generator | None = None) -> PolicyOutput:
        """A uniformly random patch location for every image (training stages I and III's random
        mode); the policy's hidden state carries on unchanged."""
        n = len(state)
        where = generator.device if generator is not None else state.policy.device
        action = torch.rand(n, 2, generator=generator, device=where).to(state.policy.device, state.pooled.dtype)
        return PolicyOutput(action, state.pooled.new_zeros(n, 1), state.policy)

    def encoder_logits(self, state: GFState) -> Tensor:
        """The last step's encoder head on its pooled features, (N, K): the global encoder's head
        after the glance, the local encoder's after a focus step (the auxiliary term of Eq. 3).
        Needs `encoder_heads=True`."""
        encoder = self.global_encoder if state.step == 1 else self.local_encoder
        if encoder.head is None:
            raise ValueError("this GFNet was built without encoder heads (GFNetConfig.encoder_heads=False)")
        return encoder.head(state.pooled)

    def focus(
        self,
        images: Tensor,
        state: GFState,
        location: PolicyOutput | None = None,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, GFState]:
        """One focus step for the images in `state` -> logits (N, K) and the new state.

        `images` (N, 3, S, S) are the full-resolution images, row i for state row i; or, with
        `image_index` (N,), a larger store (M, 3, S, S) from which row image_index[i] is used
        (the engine's way of never copying whole images between steps). `location` defaults to
        the policy's action mean (inference); training passes sampled actions (see
        `gfpipe.model.policy.sample_action`) or `random_location(state)` instead.
        """
        self._check_images(images)
        if state.step >= self.config.T:
            raise ValueError(f"these images have done all T={self.config.T} steps; no focus step is left")
        rows = images.shape[0] if image_index is None else image_index.shape[0]
        if len(state) != rows:
            raise ValueError(f"{rows} images but a state for {len(state)}")
        if location is None:
            location = self.locate(state)
        p = self.config.patch_size
        corners = patch_corners(location.action, self.config.input_size, p)  # (N, 2)
        patches = extract_patches(images, corners, p, image_index)  # (N, 3, p, p)
        pooled, fmap = self.local_encoder(patches)
        pooled = F.dropout(pooled, self.config.dropout, self.local_encoder.training)
        step = state.step + 1
        logits, cls_state = self.classify(pooled, state.classifier, step)
        glimpses = torch.cat([state.glimpses, location.action.detach().to(pooled.dtype).unsqueeze(1)], 1)
        return logits, GFState(step, cls_state, location.hidden, fmap, glimpses, pooled)

    @torch.inference_mode()
    def anytime(self, images: Tensor, return_locations: bool = False):
        """All T steps for every image -> logits (T, N, K) [and action means (T-1, N, 2)].

        This is what the paper's code computes for every image; the engine computes only what
        each image needs. An inference entry point: it runs under `torch.inference_mode` (no
        autograd graph); training steps call `glance`/`focus` directly.
        """
        logits, state = self.glance(images)
        all_logits, actions = [logits], []
        for _ in range(1, self.config.T):
            location = self.locate(state)
            actions.append(location.action)
            logits, state = self.focus(images, state, location)
            all_logits.append(logits)
        stacked = torch.stack(all_logits)
        if not return_locations:
            return stacked
        if actions:
            return stacked, torch.stack(actions)
        return stacked, stacked.new_zeros(0, images.shape[0], 2)

    def forward(self, images: Tensor) -> Tensor:
        """Inference: `anytime` logits (T, N, K)."""
        return self.anytime(images)

    def _check_images(self, images: Tensor) -> None:
        s = self.config.input_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != s or images.shape[3] != s:
            raise ValueError(f"expected images of shape (N, 3, {s}, {s}), got {tuple(images.shape)}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.card.class_names
