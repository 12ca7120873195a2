"""RoIAlign with a fast CPU backward: the same numbers as torchvision's op, its gradient computed
as one sparse matrix product instead of torchvision's serial CPU kernel.

torchvision's CPU ``roi_align`` backward walks every (RoI, channel, bin, sampling point) in one
thread and recomputes the bilinear weights for every channel. Its forward is cheap and is kept.

RoIAlign is linear in its input: ``out[r, :, ph, pw]`` is a weighted sum of input pixels (all
channels alike), so the gradient is ``grad_input[n, :, h, w] = sum M[(n, h, w), (r, ph, pw)] *
grad_output[r, :, ph, pw]``, with ``M`` sparse: each bin holds ``grid_h * grid_w`` sampling
points of four bilinear neighbours each. The weights are computed once for all channels and
all RoIs, per axis (a point's weight on a neighbour is ``wy * wx``, and torchvision drops a point
when its ``y`` or its ``x`` is outside the map), and the product runs in ``torch.sparse.mm``.

The rules for the sampling points are torchvision's CPU kernel's
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``): ``aligned`` shifts the box by half a pixel
and allows boxes smaller than a pixel; ``sampling_ratio`` 0 takes ``ceil(roi_size / pooled_size)``
points per bin and RoI (padded here to the largest grid and masked); a point with ``y < -1`` or
``y > height`` contributes nothing, ``y <= 0`` is read at 0 and ``y >= height - 1`` at
``height - 1``.

:class:`FastCPUROIAlign` is detectron2's ``ROIAlign`` with this backward on CPU tensors that need
a gradient (torchvision's op everywhere else); :func:`use_fast_cpu_roi_align` swaps it into a
built model (``MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN``, applied by the Trainer).
"""

from __future__ import annotations

from typing import Sequence

import torch
from detectron2.layers import ROIAlign
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align

__all__ = [
    "FastCPUROIAlign",
    "roi_align_backward",
    "roi_align_fast_cpu",
    "use_fast_cpu_roi_align",
]

# Most (RoI, bin, neighbour) entries of the sparse matrix built at once: 4 Mi entries take
# 80 MiB (two int64 indices and a float32 weight each).
_CHUNK_ENTRIES = 1 << 22


def _grid(roi_size: torch.Tensor, pooled: int, sampling_ratio: int) -> torch.Tensor:
    """Sampling points per bin along one axis, per RoI: ``sampling_ratio``, or where it is not
    positive torchvision's adaptive ``ceil(roi_size / pooled)`` (0 or less: no points)."""
    if sampling_ratio > 0:
        return torch.full(roi_size.shape, sampling_ratio, dtype=torch.long, device=roi_size.device)
    return torch.ceil(roi_size / pooled).long()


def _axis_points(
    start: torch.Tensor,
    roi_size: torch.Tensor,
    grid: torch.Tensor,
    pooled: int,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bilinear neighbours of one axis's sampling points: ``(index, weight)``, of shape
    (R, pooled, 2 * max(grid)), each sampling point's low and high neighbour on this axis and
    its weight there (0 for points outside the map and for the padding of RoIs with fewer
    points).

    The arithmetic is torchvision's, in the same order and dtype, so that the points fall on the
    same pixels.
    """
    dtype, device = start.dtype, start.device
    bin_size = roi_size / pooled
    max_grid = max(int(grid.max()), 1)
    bins = torch.arange(pooled, dtype=dtype, device=device)
    points = torch.arange(max_grid, device=device)
    # y = roi_start + ph * bin_size + (iy + .5) * bin_size / grid, as in torchvision.
    pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]) + (
        (points.to(dtype)[None, None, :] + 0.5) * bin_size[:, None, None]
    ) / grid.to(dtype)[:, None, None]
    used = (points[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    # Unused points (also those of a RoI with no points, whose division by 0 gave inf or nan)
    # get weight 0 below; at 0 they also get valid indices.
    pos = torch.where(used, pos, 0).clamp_(min=0)
    low = pos.long()  # truncation, as torchvision's (int) cast: pos >= 0 here
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(dtype), pos)
    frac = pos - low.to(dtype)
    used = used.to(dtype)
    index = torch.cat([low, high], dim=2)
    weight = torch.cat([(1 - frac) * used, frac * used], dim=2)
    return index, weight


def _chunks(grid_h: torch.Tensor, grid_w: torch.Tensor, bins: int) -> list[torch.Tensor]:
    """The RoIs in groups whose sparse entries, each padded to the group's largest grid, stay
    within :data:`_CHUNK_ENTRIES` (a group holds at least one RoI): with ``sampling_ratio`` 0 one
    large RoI would otherwise pad every other RoI to its grid."""
    num_rois = grid_h.shape[0]
    if bool((grid_h == grid_h[0]).all() and (grid_w == grid_w[0]).all()):
        per_roi = bins * 4 * max(int(grid_h[0]), 1) * max(int(grid_w[0]), 1)
        step = max(1, _CHUNK_ENTRIES // per_roi)
        order = torch.arange(num_rois, device=grid_h.device)
        return list(order.split(step))
    order = torch.argsort(grid_h.clamp(min=1) * grid_w.clamp(min=1))
    sorted_h = grid_h.clamp(min=1)[order].tolist()
    sorted_w = grid_w.clamp(min=1)[order].tolist()
    groups, begin, max_h, max_w = [], 0, 1, 1
    for i, (h, w) in enumerate(zip(sorted_h, sorted_w)):
        new_h, new_w = max(max_h, h), max(max_w, w)
        if i > begin and (i + 1 - begin) * bins * 4 * new_h * new_w > _CHUNK_ENTRIES:
            groups.append(order[begin:i])
            begin, new_h, new_w = i, h, w
        max_h, max_w = new_h, new_w
    groups.append(order[begin:])
    return groups


def roi_align_backward(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    input_shape: Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """The gradient of torchvision's ``roi_align`` with respect to its input, as a sparse matrix
    product (see the module docstring; one product per group of RoIs where they are many).

    Args:
        grad_output: (R, C, pooled_height, pooled_width), the gradient of the pooled features.
        rois: (R, 5) boxes, ``(batch_index, x1, y1, x2, y2)``, in ``grad_output``'s dtype.
        input_shape: (N, C, H, W) of the pooled input.
        spatial_scale, sampling_ratio, aligned: as given to ``roi_align``.

    Returns:
        The (N, C, H, W) gradient of the input.
    """
    num_images, channels, height, width = (int(s) for s in input_shape)
    num_rois, _, pooled_h, pooled_w = grad_output.shape
    if num_rois == 0 or height == 0 or width == 0 or channels == 0:
        return grad_output.new_zeros((num_images, channels, height, width))
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy op's boxes are at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    grid_h = _grid(roi_h, pooled_h, sampling_ratio)
    grid_w = _grid(roi_w, pooled_w, sampling_ratio)
    count = (grid_h * grid_w).clamp(min=1).to(grad_output.dtype)
    base = rois[:, 0].long() * (height * width)
    # Each bin's gradient for all channels, one row per (RoI, bin).
    bins = grad_output.permute(0, 2, 3, 1).reshape(-1, channels)
    bins_per_roi = pooled_h * pooled_w
    grad_input = None
    for r in _chunks(grid_h, grid_w, bins_per_roi):
        index_y, weight_y = _axis_points(y1[r], roi_h[r], grid_h[r], pooled_h, height)
        index_x, weight_x = _axis_points(x1[r], roi_w[r], grid_w[r], pooled_w, width)
        weight_y = weight_y / count[r, None, None]
        # Every (RoI, bin, y neighbour, x neighbour), (r, ph, pw, 2 * grid_h, 2 * grid_w): its
        # row of the (N * H) * W input positions, its column (the bin) and its weight, written
        # in place into one index tensor (few, large ops: each small op costs more than its work
        # here).
        shape = (r.numel(), pooled_h, pooled_w, index_y.shape[2], index_x.shape[2])
        indices = torch.empty((2, *shape), dtype=torch.long, device=grad_output.device)
        row_start = (index_y * width).add_(base[r, None, None])
        torch.add(row_start[:, :, None, :, None], index_x[:, None, :, None, :], out=indices[0])
        columns = torch.arange(r.numel() * bins_per_roi, device=indices.device)
        indices[1].copy_(columns.view(r.numel(), pooled_h, pooled_w, 1, 1).expand(shape))
        weights = (weight_y[:, :, None, :, None] * weight_x[:, None, :, None, :]).reshape(-1)
        indices = indices.view(2, -1)
        if sampling_ratio <= 0:  # drop the padding of RoIs with fewer points than the largest
            keep = weights != 0
            indices, weights = indices[:, keep], weights[keep]
        # The (N * H * W) x (r * ph * pw) matrix of the weights, duplicates summed by the product.
        matrix = torch.sparse_coo_tensor(
            indices,
            weights,
            (num_images * height * width, r.numel() * bins_per_roi),
            check_invariants=False,
        )
        if r.numel() == num_rois and bool((r[1:] > r[:-1]).all()):  # all RoIs, in order
            rows = bins
        else:
            rows = bins.view(num_rois, bins_per_roi, channels)[r].view(-1, channels)
        part = torch.sparse.mm(matrix, rows)  # (N * H * W, C)
        grad_input = part if grad_input is None else grad_input.add_(part)
    return grad_input.view(num_images, height, width, channels).permute(0, 3, 1, 2).contiguous()


class _FastCPUROIAlignFunction(torch.autograd.Function):
    """torchvision's ``roi_align`` forward, :func:`roi_align_backward` as its backward."""

    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.input_shape = input.shape
        ctx.options = (spatial_scale, sampling_ratio, aligned)
        return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = roi_align_backward(grad_output, rois, ctx.input_shape, *ctx.options)
        # No gradient for the boxes, as torchvision's op.
        return grad_input, None, None, None, None, None


def roi_align_fast_cpu(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """torchvision's ``roi_align`` (``rois`` as an (R, 5) tensor) with :func:`roi_align_backward`
    as its backward: the same values and gradients, a faster backward on the CPU.

    Raises:
        ValueError: ``rois`` is not an (R, 5) tensor.
    """
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois has shape {tuple(rois.shape)}; valid: (R, 5) rows of (batch_index, x1, y1, "
            "x2, y2)"
        )
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(int(s) for s in output_size)
    return _FastCPUROIAlignFunction.apply(
        input, rois, output_size, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


class FastCPUROIAlign(ROIAlign):
    """detectron2's ``ROIAlign`` whose backward, on CPU tensors that need a gradient, is
    :func:`roi_align_backward`; everywhere else (CUDA, inference) it is detectron2's module
    (torchvision's op). The values and gradients are the same."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not (torch.is_grad_enabled() and input.requires_grad):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        rois = rois.to(dtype=input.dtype)  # as detectron2's ROIAlign
        options = (self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)
        if torch.is_autocast_enabled("cpu") and input.dtype not in (torch.float32, torch.float64):
            # torchvision's autocast rule for roi_align: computed in float32, returned in the
            # input's dtype.
            with torch.autocast("cpu", enabled=False):
                out = roi_align_fast_cpu(input.float(), rois.float(), *options)
            return out.to(input.dtype)
        return roi_align_fast_cpu(input, rois, *options)


def use_fast_cpu_roi_align(model: nn.Module) -> int:
    """Replaces every detectron2 ``ROIAlign`` in ``model`` (the box, mask and keypoint poolers'
    ``level_poolers``) by a :class:`FastCPUROIAlign` with the same settings, in place.

    Returns:
        The number of modules replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ROIAlign:
                fast = FastCPUROIAlign(
                    child.output_size, child.spatial_scale, child.sampling_ratio, child.aligned
                )
                setattr(parent, name, fast)
                replaced += 1
    return replaced
