"""One worker's training: the stages of TRAINING_SPEC.md in plain torch, no Ray.

`Trainer` runs on one device as one rank of a data-parallel group. Each stage's computation is a
small `nn.Module` whose `forward` returns the loss (an *objective*), so that the caller's `wrap`
(Ray Train's `prepare_model`: DistributedDataParallel) sees a forward call and all-reduces the
gradients of exactly the parameters that stage trains:

- stage 0 (optional): the global encoder and its head on glance-size images, cross-entropy.
- stage I: both encoders, their heads and the classifier, with uniformly random patches;
  loss Eq. 3, (sum_t CE(p_t, y) + lambda sum_t CE(head(e_t), y)) / T.
- stage II: the policy alone, by PPO on the reward r_t = p_t[y] - p_{t-1}[y] (everything else
  frozen in eval mode). Rollouts come from a frozen copy (the "old policy"); with
  `update_epochs` 1 (the official code) the ratio is 1 at the update and the clip never acts.
- stage III: as stage I, with patches sampled from the frozen policy (std `policy_std`).
A frozen global encoder (MobileNet-V3: `freeze_global`) stays in eval mode with no gradients,
and so does a cascade classifier's step-1 head, which stands for the encoder's own head.

Randomness (augmentation, random and sampled locations) comes from generators seeded by
(config.seed, stage, epoch, rank), so a resumed epoch redraws the same numbers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfpipe.budget.scores import exit_scores
from gfpipe.model.gfnet import GFNet
from gfpipe.model.policy import PolicyOutput, action_entropy, action_log_prob
from gfpipe.train.config import SupervisedStage, TrainConfig
from gfpipe.train.data import augment, normalise

Batch = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------------
# Objectives: a forward that returns the loss, for DDP
# ---------------------------------------------------------------------------------------------


def _head_to_cascade(model: GFNet) -> None:
    """A cascade's step-1 layer is the global encoder's own head (the official inference.py reads
    step 1 from it): with the encoder frozen, copy the head in, so a model trained here (from
    ImageNet weights or after stage 0, which trains that head) predicts with it at step 1
    instead of with a layer nothing trains. Official imports already hold the copy."""
    head = model.global_encoder.head
    if head is None:
        return
    with torch.no_grad():
        model.classifier.fc_1.weight.copy_(head.weight)
        model.classifier.fc_1.bias.copy_(head.bias)


class GlanceObjective(nn.Module):
    """Stage 0: the global encoder and its head on the glance, cross-entropy."""

    def __init__(self, model: GFNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        pooled, _ = self.model.global_encoder(self.model.glance_input(images))  # (N, F)
        logits = self.model.global_encoder.head(pooled)  # (N, K)
        return F.cross_entropy(logits, labels), logits.unsqueeze(0)


class SupervisedObjective(nn.Module):
    """Stages I and III: Eq. 3 over all T steps at given patch locations.

    `noise` (T-1, N, 2) decides the locations: uniform draws in [0, 1] used as they are
    (`locations="random"`), or standard normal draws that perturb the frozen policy's mean,
    mean + std * noise clamped to [0, 1] (`locations="policy"`).
    """

    def __init__(self, model: GFNet, stage: SupervisedStage):
        super().__init__()
        self.model = model
        self.aux_weight = stage.aux_weight
        self.random = stage.locations == "random"
        self.std = stage.policy_std

    def forward(self, images: Tensor, labels: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        logits, state = model.glance(images)
        main = [F.cross_entropy(logits, labels)]
        aux = [F.cross_entropy(model.encoder_logits(state), labels)]
        all_logits = [logits]
        for t in range(1, model.config.T):
            if self.random:
                location = PolicyOutput(noise[t - 1], state.pooled.new_zeros(len(state), 1), state.policy)
            else:
                with torch.no_grad():
                    out = model.locate(state)
                action = (out.action + self.std * noise[t - 1]).clamp(0.0, 1.0)
                location = PolicyOutput(action, out.value, out.hidden)
            logits, state = model.focus(images, state, location)
            main.append(F.cross_entropy(logits, labels))
            aux.append(F.cross_entropy(model.encoder_logits(state), labels))
            all_logits.append(logits)
        loss = (torch.stack(main).sum() + self.aux_weight * torch.stack(aux).sum()) / model.config.T
        return loss, torch.stack(all_logits)


class PolicyObjective(nn.Module):
    """Stage II's PPO loss: replay the policy over a rollout's feature maps from a zero hidden
    state and score the stored actions: -min(rho A, clip(rho) A) + w_v MSE(V, R) - w_e H."""

    def __init__(self, policy: nn.Module, std: float, clip: float, value_weight: float, entropy_weight: float):
        super().__init__()
        self.policy = policy
        self.std, self.clip = std, clip
        self.value_weight, self.entropy_weight = value_weight, entropy_weight

    def forward(
        self, features: Tensor, actions: Tensor, old_log_prob: Tensor, returns: Tensor
    ) -> tuple[Tensor, Tensor]:
        """features (T-1, N, C, h, w), actions (T-1, N, 2), old_log_prob and returns (T-1, N)."""
        n = features.shape[1]
        hidden = features.new_zeros(n, self.policy.hidden)
        log_probs, values = [], []
        for t in range(features.shape[0]):
            out = self.policy(features[t], hidden)
            hidden = out.hidden
            log_probs.append(action_log_prob(out.action, actions[t], self.std))
            values.append(out.value.squeeze(-1))
        log_prob, value = torch.stack(log_probs), torch.stack(values)  # (T-1, N)
        advantage = returns - value.detach()
        ratio = torch.exp(log_prob - old_log_prob)
        surrogate = -torch.min(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage).mean()
        loss = (
            surrogate + self.value_weight * F.mse_loss(value, returns) - self.entropy_weight * action_entropy(self.std)
        )
        return loss, ratio.detach()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Runs the stages on one device as rank `rank` of `world_size` (see the module doc).

    `wrap` wraps each stage's objective for data parallelism (Ray Train's `prepare_model`);
    the identity trains on one process.
    """

    STAGES = ("stage0", "stage1", "stage2", "stage3")

    def __init__(
        self,
        config: TrainConfig,
        model: GFNet,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
        wrap: Callable[[nn.Module], nn.Module] = lambda module: module,
    ):
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.wrap = wrap
        cuda = self.device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if cuda and config.bf16 else None
        self.channels_last = cuda and config.channels_last
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.old_policy = copy.deepcopy(self.model.policy).requires_grad_(False)
        self.stage: str | None = None
        self.objective: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.completed: tuple[str, int] | None = None  # the last finished (stage, epoch)
        self._pending_optimizer: tuple[str, dict] | None = None

    # ------------------------------------------------------------------ plan and stages

    def plan(self) -> list[tuple[str, int]]:
        """[(stage, epochs)] for the stages with epochs > 0, in order."""
        return [(name, getattr(self.config, name).epochs) for name in self.STAGES if getattr(self.config, name).epochs]

    def begin_stage(self, stage: str) -> None:
        """Freeze what the stage does not train, build its objective and optimizer, wrap for DDP."""
        if stage not in self.STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(self.STAGES)}")
        self.stage = stage
        model = self.model
        model.requires_grad_(False)
        if stage == "stage2":
            model.policy.requires_grad_(True)
            self.old_policy.load_state_dict(model.policy.state_dict())
            settings = self.config.stage2
            objective = PolicyObjective(
                model.policy, settings.std, settings.clip, settings.value_weight, settings.entropy_weight
            )
            self.optimizer = torch.optim.Adam(model.policy.parameters(), lr=settings.lr, betas=settings.betas)
        elif stage == "stage0":
            model.global_encoder.requires_grad_(True)
            objective = GlanceObjective(model)
            self.optimizer = self._sgd([list(model.global_encoder.parameters())], self.config.stage0)
        else:
            settings: SupervisedStage = getattr(self.config, stage)
            encoders = list(model.local_encoder.parameters())
            model.local_encoder.requires_grad_(True)
            if not settings.freeze_global:
                model.global_encoder.requires_grad_(True)
                encoders += list(model.global_encoder.parameters())
            model.classifier.requires_grad_(True)
            if settings.freeze_global and model.config.classifier == "cascade":
                _head_to_cascade(model)
                model.classifier.fc_1.requires_grad_(False)  # the frozen encoder's own head (inference.py)
            classifier = [p for p in model.classifier.parameters() if p.requires_grad]
            objective = SupervisedObjective(model, settings)
            self.optimizer = self._sgd([encoders, classifier], settings)
        self.objective = self.wrap(objective)
        if self._pending_optimizer is not None and self._pending_optimizer[0] == stage:
            self.optimizer.load_state_dict(self._pending_optimizer[1])
        self._pending_optimizer = None

    def _sgd(self, groups: list[list[nn.Parameter]], settings: SupervisedStage) -> torch.optim.Optimizer:
        """SGD with Nesterov momentum (the paper's, for pretrained encoders), or AdamW (training a
        small encoder from scratch); one parameter group per learning rate."""
        lrs = [settings.encoder_lr, settings.classifier_lr]
        seen: set[int] = set()
        unique = []  # a parameter shared by two parts (one encoder for both) is optimised once
        for group in groups:
            unique.append([p for p in group if id(p) not in seen and not seen.add(id(p))])
        params = [{"params": g, "lr": lr, "base_lr": lr} for g, lr in zip(unique, lrs, strict=False) if g]
        if settings.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lrs[0], weight_decay=settings.weight_decay)
        return torch.optim.SGD(
            params, lr=lrs[0], momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay
        )

    def _set_modes(self, stage: str) -> None:
        """Train mode (BatchNorm statistics, dropout) for the parts the stage trains, eval elsewhere."""
        model = self.model
        model.eval()
        if stage == "stage0":
            model.global_encoder.train()
        elif stage in ("stage1", "stage3"):
            model.local_encoder.train()
            model.classifier.train()
            if not getattr(self.config, stage).freeze_global:
                model.global_encoder.train()
        else:  # stage II: only the policy, which has no BatchNorm or dropout
            model.policy.train()

    def _cosine(self, stage: str, epoch: int) -> None:
        """lr_e = 0.5 base (1 + cos(pi e / E)), set at the start of each epoch (TRAINING_SPEC)."""
        if stage == "stage2":
            return
        epochs = getattr(self.config, stage).epochs
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    # ------------------------------------------------------------------ epochs

    def generator(self, stage: str, epoch: int) -> torch.Generator:
        """The CPU generator for one (stage, epoch) on this rank: the same on a re-run."""
        index = self.STAGES.index(stage)
        return torch.Generator().manual_seed(((self.config.seed * 8 + index) * 100_003 + epoch) * 1_009 + self.rank)

    def train_epoch(self, stage: str, epoch: int, batches: Iterable[Batch]) -> dict[str, float]:
        """One epoch of `stage` over this worker's `batches` (uint8 (n, 3, R, R), labels (n,)).

        Returns this worker's sums: loss_sum, images, seconds, and per step the training
        predictions' correct counts (`correct_t1`...), which the caller adds over workers.
        """
        if stage != self.stage:
            self.begin_stage(stage)
        self._set_modes(stage)
        self._cosine(stage, epoch)
        generator = self.generator(stage, epoch)
        T = self.model.config.T
        sums = {"loss_sum": 0.0, "images": 0.0, **{f"correct_t{t}": 0.0 for t in range(1, T + 1)}}
        started = time.perf_counter()
        for raw, labels in batches:
            images = self._training_images(raw, generator)
            labels = labels.to(self.device, torch.long)
            if stage == "stage2":
                loss, logits = self._policy_update(images, labels, generator)
            else:
                loss, logits = self._supervised_update(stage, images, labels, generator)
            n = labels.shape[0]
            sums["loss_sum"] += float(loss) * n
            sums["images"] += n
            correct = (logits.argmax(-1) == labels).sum(-1).tolist()  # per step
            for t, c in enumerate(correct, 1):
                sums[f"correct_t{t}"] += c
        sums["seconds"] = time.perf_counter() - started
        self.completed = (stage, epoch)
        return sums

    def _training_images(self, raw: Tensor, generator: torch.Generator) -> Tensor:
        aug = self.config.augment
        images = augment(
            raw.to(self.device, non_blocking=True),
            self.config.preprocessing.crop,
            generator,
            random_resized_crop=aug.random_resized_crop,
            scale=aug.scale,
            ratio=aug.ratio,
            hflip=aug.hflip,
        )
        return self._prepared(normalise(images, self.config.preprocessing))

    def _prepared(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _supervised_update(self, stage: str, images: Tensor, labels: Tensor, generator: torch.Generator):
        n, steps = images.shape[0], self.model.config.T - 1
        settings = getattr(self.config, stage)
        if stage == "stage0":
            args: tuple = (images, labels)
        elif settings.locations == "random":
            args = (images, labels, torch.rand(steps, n, 2, generator=generator).to(self.device))
        else:
            args = (images, labels, torch.randn(steps, n, 2, generator=generator).to(self.device))
        with self._autocast():
            loss, logits = self.objective(*args)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def rollout(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Stage II's rollout with the old policy: feature maps, sampled actions and their
        log-probs, normalised returns of the reward r_t = p_t[y] - p_{t-1}[y], and logits."""
        settings, model = self.config.stage2, self.model
        with self._autocast():
            logits, state = model.glance(images)
            previous = logits.float().softmax(-1).gather(1, labels[:, None]).squeeze(1)  # (N,)
            features, actions, log_probs, rewards, all_logits = [], [], [], [], [logits]
            for _ in range(1, model.config.T):
                features.append(state.features.float())
                out = self.old_policy(state.features, state.policy)
                noise = torch.randn(out.action.shape, generator=generator).to(self.device)
                action = (out.action.float() + settings.std * noise).clamp(0.0, 1.0)
                actions.append(action)
                log_probs.append(action_log_prob(out.action.float(), action, settings.std))
                logits, state = model.focus(images, state, PolicyOutput(action, out.value, out.hidden))
                current = logits.float().softmax(-1).gather(1, labels[:, None]).squeeze(1)
                rewards.append(current - previous)
                previous = current
                all_logits.append(logits)
        returns = torch.zeros_like(rewards[0])
        discounted = []
        for reward in reversed(rewards):
            returns = reward + settings.gamma * returns
            discounted.append(returns)
        returns = torch.stack(discounted[::-1])  # (T-1, N)
        returns = (returns - returns.mean()) / (returns.std() + 1e-5)
        return {
            "features": torch.stack(features),
            "actions": torch.stack(actions),
            "log_probs": torch.stack(log_probs),
            "returns": returns,
            "rewards": torch.stack(rewards),
            "logits": torch.stack(all_logits).float(),
        }

    def _policy_update(self, images: Tensor, labels: Tensor, generator: torch.Generator):
        data = self.rollout(images, labels, generator)
        loss = torch.zeros(())
        for _ in range(self.config.stage2.update_epochs):
            loss, _ = self.objective(data["features"], data["actions"], data["log_probs"], data["returns"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.old_policy.load_state_dict(self.model.policy.state_dict())
        return loss.detach(), data["logits"]

    # ------------------------------------------------------------------ evaluation

    @torch.inference_mode()
    def _anytime(self, raw: Tensor) -> Tensor:
        images = self._prepared(normalise(raw.to(self.device, non_blocking=True), self.config.preprocessing))
        with self._autocast():
            return self.model.anytime(images).float()  # (T, n, K)

    def evaluate(self, batches: Iterable[Batch]) -> dict[str, Any]:
        """Per-step correct counts with the policy's mean locations (as inference runs)."""
        self.model.eval()
        T = self.model.config.T
        correct, images = [0] * T, 0
        for raw, labels in batches:
            logits = self._anytime(raw)
            hits = (logits.argmax(-1).cpu() == labels.cpu().long()).sum(-1).tolist()
            correct = [a + b for a, b in zip(correct, hits, strict=True)]
            images += int(labels.shape[0])
        return {"correct": correct, "images": images}

    def calibrate(self, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit scores (n, T) float32, predictions (n, T) and labels (n,) on held-out batches."""
        self.model.eval()
        scores, predictions, labels = [], [], []
        for raw, batch_labels in batches:
            logits = self._anytime(raw)
            scores.append(exit_scores(logits).T.cpu().numpy())
            predictions.append(logits.argmax(-1).T.cpu().numpy())
            labels.append(batch_labels.cpu().numpy().astype(np.int64))
        T = self.model.config.T
        if not scores:
            return np.zeros((0, T), np.float32), np.zeros((0, T), np.int64), np.zeros(0, np.int64)
        return np.concatenate(scores), np.concatenate(predictions), np.concatenate(labels)

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, old policy and progress: everything to resume after `completed`."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "old_policy": {k: v.detach().cpu() for k, v in self.old_policy.state_dict().items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "stage": self.stage,
            "completed": self.completed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; the optimizer state is applied when its stage begins again."""
        self.model.load_state_dict(state["model"])
        self.old_policy.load_state_dict(state["old_policy"])
        self.completed = None if state["completed"] is None else tuple(state["completed"])
        self.stage = None
        if state.get("optimizer") is not None and state.get("stage") is not None:
            self._pending_optimizer = (state["stage"], state["optimizer"])

    def remaining(self) -> list[tuple[str, list[int]]]:
        """What is left of the plan after `completed`: [(stage, [epochs to run])]."""
        left, passed = [], self.completed is None
        for stage, epochs in self.plan():
            if passed:
                left.append((stage, list(range(epochs))))
            elif stage == self.completed[0]:
                passed = True
                rest = list(range(self.completed[1] + 1, epochs))
                if rest:
                    left.append((stage, rest))
        return left
