"""The study's focal loss on softmax probabilities, with a clamped one-hot target."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Smoothing constant s: the one-hot target is clamped to [s / (C - 1), 1 - s] and s is added to p_t.
SMOOTH = 1e-5


class FocalLoss(nn.Module):
    """Focal loss with class weights, as the study computes it.

    For C classes, class weights alpha normalised to sum 1, and s = 1e-5:

    - the one-hot target is clamped to [s / (C - 1), 1 - s];
    - p_t = sum over classes of (clamped one-hot * probabilities) + s;
    - alpha_t = the normalised weight of the voxel's true class;
    - loss = mean over all voxels of -alpha_t * (1 - p_t) ** gamma * log(p_t).

    Args:
        class_weights: one weight per class (background, liver, tumor); normalised to sum 1.
        gamma: focusing exponent (study: 2).
    """

    def __init__(self, class_weights: Sequence[float], gamma: float = 2.0) -> None:
        super().__init__()
        weights = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
        if weights.ndim != 1 or len(weights) < 2:
            raise ValueError(f"class_weights = {list(class_weights)!r}; expected one weight per class, 2 or more")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"class_weights = {list(class_weights)!r}; expected non-negative weights, positive sum")
        self.gamma = float(gamma)
        self.register_buffer("alpha", weights / weights.sum(), persistent=False)

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the mean focal loss.

        Args:
            probabilities: (N, C, X, Y, Z) float, softmax over axis 1 (any number of spatial axes).
            target: (N, X, Y, Z) integer class indices in [0, C).

        Returns:
            A scalar tensor.
        """
        num_classes = probabilities.shape[1]
        if num_classes != len(self.alpha):
            raise ValueError(
                f"probabilities have {num_classes} classes on axis 1; the loss has {len(self.alpha)} class weights"
            )
        if target.shape != probabilities.shape[:1] + probabilities.shape[2:]:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match probabilities {tuple(probabilities.shape)} "
                "without the class axis"
            )

        target = target.long()
        one_hot = torch.zeros_like(probabilities).scatter_(1, target.unsqueeze(1), 1.0)
        one_hot = one_hot.clamp(SMOOTH / (num_classes - 1), 1.0 - SMOOTH)
        p_t = (one_hot * probabilities).sum(dim=1) + SMOOTH

        alpha_t = self.alpha.to(probabilities.device)[target]
        loss = -alpha_t * (1.0 - p_t) ** self.gamma * torch.log(p_t)
        return loss.mean()
