"""The convolutional layers of a model, wherever they sit (top level, or inside Residual,
Skip and Backbone blocks), and a way to read their activations during one forward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cnnctl.errors import DataError
from cnnctl.suggest import suggest

# A block's shortcut projection (model/blocks.py names it `<block>_project`) is a 1x1
# convolution of the block's input, not the deepest features: never the default layer.
SHORTCUT_SUFFIX = "_project"
CONV_TYPES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose")


def conv_layers(model: Any) -> list[tuple[str, Any]]:
    """(path, layer) of every 2-D convolution, in the order the data reaches them.

    Any layer that holds layers of its own (a block, a nested model) is searched too; an
    inner layer's path is `block/inner`.
    """
    found: list[tuple[str, Any]] = []

    def visit(layer: Any, prefix: str) -> None:
        for inner in getattr(layer, "layers", ()):
            path = f"{prefix}{inner.name}"
            if _is_conv(inner):
                found.append((path, inner))
            visit(inner, f"{path}/")

    visit(model, "")
    return found


def _is_conv(layer: Any) -> bool:
    """A 2-D convolution whose output keeps height and width (batch, H, W, C)."""
    kinds = {cls.__name__ for cls in type(layer).__mro__}
    if not kinds.intersection(CONV_TYPES):
        return False
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # never called: no shape to read
        return False


def find_layer(model: Any, name: str | None, where: str) -> tuple[str, Any]:
    """The layer named `name` (its path, or its own name where that is unique), or by
    default the last convolution that is not a shortcut projection.

    Raises `DataError` naming `where` (the model file) when there is none or no such name.
    """
    convs = conv_layers(model)
    if not convs:
        raise DataError(
            f"{where}: the model has no convolutional layer to read a map at",
            "use --method saliency or --method occlusion, which need none",
        )
    if name is None:
        main = [c for c in convs if not c[1].name.endswith(SHORTCUT_SUFFIX)] or convs
        return main[-1]
    exact = [c for c in convs if c[0] == name] or [c for c in convs if c[1].name == name]
    if len(exact) == 1:
        return exact[0]
    paths = [path for path, _ in convs]
    listed = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
    if exact:
        raise DataError(
            f"--layer {name}: {len(exact)} layers of {where} have this name",
            f"give its path: {', '.join(p for p, _ in exact)}",
        )
    raise DataError(
        f"--layer {name}: no convolutional layer of that name in {where}"
        f"{suggest(name, paths + [layer.name for _, layer in convs])}",
        f"convolutional layers: {listed}",
    )


@contextlib.contextmanager
def recording(layers: list[Any]) -> Iterator[list[list[Any]]]:
    """While open, each call of `layers[i]` appends its output to the i-th list yielded.

    It works at any depth of nesting, where a functional sub-model of a Sequential model's
    inner layer cannot be cut out: the layer's own `call` is wrapped on the instance, and
    put back on leaving.
    """
    seen: list[list[Any]] = [[] for _ in layers]
    for layer, outputs in zip(layers, seen, strict=True):
        original = layer.call

        def call(*args: Any, _original: Any = original, _outputs: Any = outputs, **kwargs: Any):
            result = _original(*args, **kwargs)
            _outputs.append(result)
            return result

        object.__setattr__(layer, "call", call)
    try:
        yield seen
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


@contextlib.contextmanager
def linear_head(model: Any) -> Iterator[Any]:
    """The model's last layer without its softmax or sigmoid while open; yields that
    activation (identity where there was none).

    Grad-CAM differentiates the class score before the softmax (Selvaraju et al., 2017,
    section 3: "y^c ... before the softmax"): a saturated probability has no gradient left.
    """
    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if last is None or name not in ("softmax", "sigmoid"):
        yield _identity
        return
    import keras

    object.__setattr__(last, "activation", keras.activations.linear)
    try:
        yield activation
    finally:
        object.__setattr__(last, "activation", activation)


def _identity(x: Any) -> Any:
    return x
