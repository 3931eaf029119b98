"""Input-shape checks shared by the model families, so every wrong shape fails the same clear way."""
from __future__ import annotations

from ..errors import UserError


def shape_error(model: str, want: str, got: tuple[int, ...], fix: str) -> UserError:
    """One-line error naming the model, the shape it needs, the shape it got and what to do."""
    return UserError(f"model '{model}' needs {want}, got input shape {tuple(got)}; {fix}")


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an image input, or a UserError for anything else."""
    if len(input_shape) != 3:
        raise shape_error(model, "images shaped (channels, height, width)", input_shape,
                          "use an image dataset (digits, cifar10, mnist) or a model for your data (mlp, cnn1d)")
    c, h, w = input_shape
    return c, h, w


def sequence_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(channels, length) of a 1-D sequence input, or a UserError for anything else."""
    if len(input_shape) != 2:
        raise shape_error(model, "1-D sequences shaped (channels, length)", input_shape,
                          "use a 1-D dataset such as mnist1d, or conv2/conv4/conv6/mlp for other data")
    c, n = input_shape
    return c, n
