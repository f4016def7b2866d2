"""Boundary checks shared by every layer: is a tensor a batch a network can take."""

from __future__ import annotations

from torch import Tensor


def check_input(
    x: Tensor,
    in_channels: int,
    input_shape: tuple[int, int] | None = None,
    *,
    what: str = "input",
) -> None:
    """Check that ``x`` is a batch the network can take, raising a helpful error if not.

    Args:
        x: The batch, (N, C, T, 1) for time series or (N, C, H, W) for images.
        in_channels: Channels the network was built for.
        input_shape: Expected ``(T, 1)`` / ``(H, W)``; ``None`` skips the check.
        what: Name of ``x`` used in messages.

    Raises:
        ValueError: If ``x`` is not a 4-D floating tensor with ``in_channels`` channels (and
            ``input_shape`` spatial dims when given).
    """
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{what} must be a torch.Tensor, got {type(x).__name__}; convert with "
            "torch.as_tensor(x, dtype=torch.float32)"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{what}: got shape {tuple(x.shape)}; time series must be (N, C, T, 1), images "
            "(N, C, H, W); a (N, C, T) array can be lifted with x.unsqueeze(-1)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{what}: dtype {x.dtype} is not floating point; use x.float()")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{what}: has {x.shape[1]} channels (shape {tuple(x.shape)}) but the network expects "
            f"{in_channels}; set in_channels={x.shape[1]} in the config, or fix the data's "
            "channel axis (it must be axis 1)"
        )
    if input_shape is not None and tuple(x.shape[2:]) != tuple(input_shape):
        raise ValueError(
            f"{what}: spatial shape {tuple(x.shape[2:])} differs from the expected "
            f"input_shape={tuple(input_shape)}; set input_shape={tuple(x.shape[2:])} in the "
            "config, or resample/crop the data"
        )
