"""What a model config may name, and how large the model it describes may be.

`check_config` admits only standard Keras *classes*, by exact name, from safe modules
(never functions such as `deserialize`, never dunder names). `check_sizes` builds the
model symbolically inside Keras' `StatelessScope` (variables get shapes but no memory)
and bounds its parameter count and its largest activation at batch size 1, before
Keras allocates anything.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cnnctl.allowlist import OWN_OBJECTS
from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import refuse_over

SAFE_MODULES = ("initializers", "regularizers", "constraints", "losses", "metrics")
MODEL_CLASSES = {
    "Sequential",
    "Functional",
    "Model",
    "InputLayer",
    "DTypePolicy",
    "FloatDTypePolicy",
}
RISKY = {
    "Lambda",
    "TFSMLayer",
    "TorchModuleWrapper",
    "JaxLayer",
    "FlaxLayer",
    "StringLookup",
    "IntegerLookup",
    "TextVectorization",
}
# A functional model's config names the tensors between layers as `__keras_tensor__`
# objects: plain data (a shape, a dtype, which layer made it), built by no class.
KERAS_TENSOR = "__keras_tensor__"
KERAS_TENSOR_KEYS = {"shape", "dtype", "keras_history", "sparse", "ragged"}
GUIDE = "cnnctl only loads models built from standard Keras layers"
# Optimizer and metric state (steps, counts, AUC thresholds) may hold a little more than the
# model's largest variable.
STATE_VALUES = 2**16


class Sizes(NamedTuple):
    """What the weights of a model config may hold, known before any weight is read."""

    params: int  # parameters of the model
    largest: int  # values in its largest variable

    @property
    def weights_bytes(self) -> int:
        """Weights take < 32 bytes per parameter (with optimizer state, float64 at most)."""
        return 32 * self.params + 16 * 2**20

    @property
    def array_values(self) -> int:
        """One array holds at most as many values as the largest variable (or optimizer state)."""
        return max(self.largest, STATE_VALUES)


def too_large(name: str, shape: tuple[int, ...], itemsize: int, sizes: Sizes) -> str | None:
    """Why the array `name` of `shape` fits no variable of the model, or None when it may."""
    values = math.prod(shape)
    if values > sizes.array_values or values * itemsize > 8 * sizes.array_values:  # float64
        return (
            f"refused: weights '{name}' declare shape {tuple(shape)} "
            f"({values * itemsize:,} bytes), larger than any variable of the model "
            f"(its largest holds {sizes.largest:,} values)"
        )
    return None


def too_many_bytes(declared: int, sizes: Sizes) -> str | None:
    """Why weights declaring `declared` bytes in all are more than the model needs, or None."""
    if declared > sizes.weights_bytes:
        return (
            f"refused: its weights declare {declared:,} bytes, far more than a model of "
            f"{sizes.params:,} parameters needs ({sizes.weights_bytes:,})"
        )
    return None


WRONG_MODEL = (
    "these weights do not fit the model its config.json describes; "
    "save the model again with model.save('x.keras')"
)


def check_config(path: Path, config: Any) -> None:
    """Every object the config names must be a standard Keras class from a safe module."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(f"{path}: damaged model config (not a serialized Keras model)")
    allowed = _allowed_classes()
    for item, owner in _objects(path, config):
        name, module = item.get("class_name"), item.get("module")
        registered = item.get("registered_name")
        if not isinstance(name, str):
            raise ModelFileError(f"{path}: damaged model config (class_name {name!r})")
        if name == KERAS_TENSOR and module is None and _plain_tensor(item):
            continue
        if (module, registered) in OWN_OBJECTS and owner is None:  # cnnctl's own loss
            continue
        if module is not None and (not isinstance(module, str) or module.split(".")[0] != "keras"):
            raise ModelFileError(f"{path}: refused: it names code from module '{module}'", GUIDE)
        if registered not in (None, name) and not str(registered).startswith("keras"):
            raise ModelFileError(
                f"{path}: refused: it needs the custom object '{registered}'", GUIDE
            )
        if name not in allowed:
            if owner is None or name in RISKY:
                why = (
                    "which can run code or read files"
                    if name in RISKY
                    else "not a class cnnctl loads"
                )
                raise ModelFileError(f"{path}: refused: it contains a {name} layer, {why}", GUIDE)
            raise ModelFileError(
                f"{path}: refused: its {owner} layer names '{name}', "
                "not a Keras class cnnctl loads",
                GUIDE,
            )


def _plain_tensor(item: dict[str, Any]) -> bool:
    config = item.get("config")
    return (
        set(item) <= {"class_name", "config", "module", "registered_name"}
        and isinstance(config, dict)
        and set(config) <= KERAS_TENSOR_KEYS
    )


@functools.cache
def _allowed_classes() -> frozenset[str]:
    """Class names only, by exact name: no functions (`deserialize`), no `_private` or dunders."""
    import keras

    from cnnctl.allowlist import LAYERS, MODEL_FILE_CLASSES, OPTIMIZERS

    names = set(LAYERS) | set(OPTIMIZERS) | set(MODEL_FILE_CLASSES) | MODEL_CLASSES
    for module in (keras.optimizers.schedules, *(getattr(keras, m) for m in SAFE_MODULES)):
        names |= {
            n for n, value in vars(module).items() if inspect.isclass(value) and n[:1].isupper()
        }
    return frozenset(names - RISKY)


def _objects(
    path: Path, value: Any, owner: str | None = None, depth: int = 0
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every serialized object inside the config, with its layer's class.

    A serialized object is a dict with `class_name`.
    """
    if depth > 100:
        raise ModelFileError(f"{path}: refused: its config is nested too deeply")
    if isinstance(value, dict):
        if "class_name" in value:
            yield value, owner
            if (
                isinstance(value.get("class_name"), str)
                and value["class_name"] not in MODEL_CLASSES
            ):
                owner = owner or value["class_name"]
        for child in value.values():
            yield from _objects(path, child, owner, depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _objects(path, child, owner, depth + 1)


def check_sizes(path: Path, config: dict[str, Any], legacy: bool = False) -> Sizes:
    """Bound parameters and the largest activation (batch 1) without allocating the model.

    Returns:
        The model's parameter count and the values in its largest variable.
    """
    import keras
    from keras.src.backend.common import global_state

    plain = {k: v for k, v in config.items() if k != "compile_config"}
    # Variables made in a StatelessScope get a shape but no memory; Keras would allocate them
    # all when the scope ends, so the scope is told not to, and they are forgotten afterwards.
    pending = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            if legacy:  # Keras 2 style config, as legacy .h5 files hold
                from keras.src.legacy.saving import saving_utils

                model = saving_utils.model_from_config(plain)
            else:
                model = keras.saving.deserialize_keras_object(plain, safe_mode=True)
            if not isinstance(model, keras.Model):
                raise ModelFileError(
                    f"{path}: not a Keras model (its config builds a {type(model).__name__})"
                )
            if not model.built or not model.inputs:
                raise ModelFileError(
                    f"{path}: refused: the model declares no input shape",
                    "save the model after building it (give it a keras.Input)",
                )
            counts = [math.prod(_dims(w.shape)) for w in model.weights]
            params = sum(counts)
            largest, where = _largest_activation(model)
    except ModelFileError:
        raise
    except RecursionError:
        raise ModelFileError(f"{path}: refused: the model is nested too deeply") from None
    except Exception as error:  # a damaged config makes Keras raise nearly anything
        raise ModelFileError(
            f"{path}: not a loadable Keras model ({type(error).__name__}: {first_line(error)})"
        ) from None
    finally:
        global_state.set_global_attribute("uninitialized_variables", pending)
    refuse_over("params", params, str(path), "the model has too many parameters", ModelFileError)
    refuse_over(
        "activation",
        largest,
        str(path),
        f"layer '{where}' makes too large an output for one image",
        ModelFileError,
    )
    return Sizes(params, max(counts, default=0))


def _dims(shape: Any) -> list[int]:
    return [1 if n is None else int(n) for n in shape]


def _largest_activation(model: Any) -> tuple[int, str]:
    """The most values any layer's output (or the input) holds for one image."""
    largest, where = 0, "input"
    for tensor in model.inputs:
        largest = max(largest, math.prod(_dims(tensor.shape)))
    for layer in _layers(model):
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.output_tensors:
                size = math.prod(_dims(tensor.shape))
                if size > largest:
                    largest, where = size, layer.name
    return largest, where


def _layers(model: Any, depth: int = 0) -> Iterator[Any]:
    for layer in getattr(model, "layers", []):
        yield layer
        if depth < 20:
            yield from _layers(layer, depth + 1)
