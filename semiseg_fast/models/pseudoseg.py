"""PseudoSeg's model add-ons (Zou et al., ICLR 2021): a multi-label image classifier on the pooled
deepest features, Grad-CAM of those features with respect to it, the self-attention refinement
with a background channel, and the SGC head whose logits are fused with the decoder's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_labels_from_masks(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(N, C - 1) float multi-hot of the foreground classes present in each (N, H, W) label map
    (class 0 is the background and has no image label, as in PseudoSeg)."""
    onehot = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)
    flat = labels.reshape(labels.shape[0], -1).long()
    flat = torch.where(flat == ignore_index, torch.full_like(flat, num_classes), flat)
    onehot.scatter_(1, flat, 1.0)
    return onehot[:, 1:num_classes]


def grad_cam(features: torch.Tensor, classifier: nn.Linear, image_labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of ``features`` (N, K, h, w) for the classes of a linear classifier on their global
    average: CAM_c = ReLU(sum_k alpha_ck A_k) * label_c, divided by its spatial maximum, no gradient.

    For score s_c = w_c . mean_hw(A) + b_c the gradient d s_c / d A_k(h, w) is w_ck / (h w) at every
    position, so alpha_ck = GAP(d s_c / d A_k) = w_ck / (h w): the C - 1 backward passes of the
    general method reduce to one 1x1 convolution (the constant cancels in the normalisation)."""
    with torch.no_grad():
        cam = F.relu(torch.einsum("nkhw,ck->nchw", features.float(), classifier.weight.float()))
        cam = cam * image_labels.float()[:, :, None, None]
        peak = cam.amax(dim=(2, 3), keepdim=True)
        return cam / torch.where(peak > 0, peak, torch.ones_like(peak))


class SelfAttentionGradCAM(nn.Module):
    """SGC: refines CAMs with self-attention over deep features, prepends a background channel
    (2 - max of the refined scores, which lie in [0, 2]) and maps the result to class logits with a
    1x1 convolution + BatchNorm. Attention features and CAMs enter without gradient; the key, query
    and output layers learn from the SGC's own cross-entropy on labeled images."""

    def __init__(self, num_classes: int, feature_channels: int, key_dim: int = 32):
        super().__init__()
        self.key = nn.Conv2d(feature_channels, key_dim, 1)
        self.query = nn.Conv2d(feature_channels, key_dim, 1)
        self.out = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes))
        self.key_dim = key_dim

    def forward(self, features: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        features = features.detach()
        n, _, h, w = cam.shape
        k = self.key(features).flatten(2)  # (N, d, hw)
        q = self.query(features).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k / self.key_dim**0.5, dim=-1)  # (N, hw, hw)
        refined = (cam.flatten(2).to(attn.dtype) @ attn.transpose(1, 2)).view(n, -1, h, w) + cam
        background = 2.0 - refined.amax(dim=1, keepdim=True)
        return self.out(torch.cat([background, refined], dim=1))


class PseudoSegHeads(nn.Module):
    """The classifier and SGC of PseudoSeg on top of a backbone.

    ``forward(deep, attention_features, image_labels=None)`` returns (class logits (N, C - 1),
    SGC logits (N, C, h, w) at the CAM resolution). CAMs use ``image_labels`` where given (rows of
    0/1; a negative entry means "unknown") and the classifier's own sigmoid >= 0.5 elsewhere.
    ``classifier_backprop=False`` trains the classifier on detached pooled features, so its loss
    leaves the backbone alone."""

    def __init__(
        self,
        num_classes: int,
        deep_channels: int,
        attention_channels: int,
        key_dim: int = 32,
        classifier_backprop: bool = True,
    ):
        super().__init__()
        self.classifier = nn.Linear(deep_channels, num_classes - 1)
        self.classifier_backprop = classifier_backprop
        self.sgc = SelfAttentionGradCAM(num_classes, attention_channels, key_dim)

    def forward(self, deep: torch.Tensor, attention_features: torch.Tensor, image_labels: torch.Tensor | None = None):
        pooled = deep.mean(dim=(2, 3))
        class_logits = self.classifier(pooled if self.classifier_backprop else pooled.detach())
        labels = (class_logits.detach() >= 0).float()  # sigmoid >= 0.5
        if image_labels is not None:
            labels = torch.where(image_labels >= 0, image_labels.float(), labels)
        cam = grad_cam(deep, self.classifier, labels)
        return class_logits, self.sgc(attention_features, cam)
