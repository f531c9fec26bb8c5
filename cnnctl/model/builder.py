"""`Config` -> a compiled `keras.Sequential`, from allow-lists of Keras classes.

Only classes named here can be built: no `Lambda`, nothing imported by a
string, no nested objects that Keras would deserialize. Every mistake is a
`ConfigError` that points at the layer in the config file, raised before
training starts.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import keras

from cnnctl.allowlist import AUGMENTATIONS, GEOMETRIC, LAYERS, OPTIMIZERS
from cnnctl.config import Config, ObjectSpec
from cnnctl.errors import ConfigError, first_line
from cnnctl.limits import limit
from cnnctl.model.blocks import BLOCK_TYPES, build_block
from cnnctl.suggest import suggest
from cnnctl.tasks import task_of

# Arguments every layer takes through `keras.layers.Layer`.
_COMMON_LAYER_ARGS = ("name", "trainable", "dtype", "activity_regularizer")


def mixed_policy() -> str | None:
    """The mixed-precision policy this machine runs fast, or None where it has none."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def build_model(
    config: Config,
    outputs: int | None = None,
    offline: bool = False,
    scaling: dict[str, Any] | None = None,
) -> keras.Sequential:
    """Build (not compile) the config's network; the task checks its head against `outputs`
    (classes, labels or targets of the data), where they are known.

    `offline`: a Backbone's ImageNet weights must already be in Keras' cache.
    `scaling`: {"mean": [...], "std": [...]} of standardized targets: a fixed last layer
    (`outputs * std + mean`) so the network learns standardized values and every output
    (predict, evaluate, exported files) is in the targets' own units.
    """
    policy = mixed_policy() if config.train.precision == "mixed" else None
    previous = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        model = _build(config, outputs, policy is not None, offline)
        if scaling is not None:
            model.add(
                keras.layers.Rescaling(
                    scale=list(scaling["std"]),
                    offset=list(scaling["mean"]),
                    dtype="float32",
                    name="targets",
                )
            )
        return model
    finally:
        keras.config.set_dtype_policy(previous)


def _build(
    config: Config, outputs: int | None, float32_last: bool, offline: bool
) -> keras.Sequential:
    model = keras.Sequential(name=config.name.replace("-", "_").replace(".", "_"))
    model.add(keras.Input(shape=tuple(config.model.input_shape)))
    # Augmentation sees raw 0..255 pixels, the range Keras' augmentation layers assume by default.
    joint = task_of(config).mask_labels  # geometric ones move the masks too: in the pipeline
    for index, spec in enumerate(config.data.augment):
        path = ("data", "augment", index)
        layer = _instantiate(spec, _resolve(spec, "augmentation", config, path), config, path)
        if not (joint and spec.type in GEOMETRIC):
            model.add(layer)
    if config.data.normalize:
        # Inside the model, so that a saved model takes raw 0..255 pixels.
        model.add(keras.layers.Rescaling(1.0 / 255, name="normalize"))
    shape = (None, *config.model.input_shape)
    for index, spec in enumerate(config.model.layers):
        path = ("model", "layers", index)
        last = index == len(config.model.layers) - 1
        # The output stays float32 under mixed precision, so that softmax and the loss stay stable.
        extra = {"dtype": "float32"} if last and float32_last and "dtype" not in spec.args else {}
        layer = (
            build_block(spec, shape, config, path, _layer, offline)
            if spec.type in BLOCK_TYPES
            else _layer(spec, shape, config, path, extra)
        )
        try:
            model.add(layer)
            shape = model.output_shape
        except Exception as error:  # Keras raises many kinds for impossible shapes
            raise ConfigError(
                f"{config.where(path)}: {spec.type} cannot take an input of shape {shape}: "
                f"{first_line(error)}",
                "check the sizes of this layer and of the layers before it",
            ) from None
    # the head's shape and activation always; its size where the data's classes are known
    task_of(config).check_head(model.output_shape, outputs, config)
    return model


def joint_augmentation(config: Config) -> list[Any]:
    """The geometric layers of data.augment, for images and masks moved together in the input
    pipeline (where labels are masks; else none): nearest-neighbour sampling, so that a mask
    keeps its class values."""
    if not task_of(config).mask_labels:
        return []
    layers = []
    for index, spec in enumerate(config.data.augment):
        if spec.type not in GEOMETRIC:
            continue
        path = ("data", "augment", index)
        cls = _resolve(spec, "augmentation", config, path)
        nearest = {"interpolation": "nearest"} if "interpolation" in _arguments_of(cls) else {}
        layers.append(_instantiate(spec, cls, config, path, nearest))
    return layers


def _layer(
    spec: ObjectSpec, shape: tuple, config: Config, path: tuple, extra: dict | None = None
) -> Any:
    """The layer at `path` for inputs of `shape`.

    An allow-listed Keras layer, or a block of them.
    """
    if spec.type in BLOCK_TYPES:
        return build_block(spec, shape, config, path, _layer)
    layer = _instantiate(spec, _resolve(spec, "layer", config, path), config, path, extra)
    _check_size(layer, shape, config, path)
    return layer


def compile_model(model: keras.Model, config: Config, steps_per_epoch: int | None = None) -> None:
    """Attach the config's optimizer, loss and metrics (and how to run them) to `model`."""
    train = config.train
    path = ("train", "optimizer")
    optimizer = _instantiate(
        train.optimizer, _resolve(train.optimizer, "optimizer", config, path), config, path
    )
    task = task_of(config)
    outputs = model.output_shape[-1]
    metrics: list[Any] = []
    for index, name in enumerate(train.metrics):
        made = task.metric_object(name, config, outputs)
        metrics.append(name if made is None else made)  # by name, Keras logs it by that name
        try:
            made is not None or name in ("accuracy", "acc") or keras.metrics.get(name)
        except ValueError:
            known = ["accuracy", *(n for n in keras.metrics.__dict__ if not n.startswith("_"))]
            raise ConfigError(
                f"{config.where(('train', 'metrics', index))}: unknown metric "
                f"'{name}'{suggest(name, known)}",
                task.metric_hint(),
            ) from None
    loss: Any = task.loss_object(config, outputs) or train.loss
    if train.label_smoothing:  # categorical_crossentropy -> keras.losses.CategoricalCrossentropy
        loss_class = getattr(keras.losses, train.loss.title().replace("_", ""))
        loss = loss_class(label_smoothing=train.label_smoothing)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        jit_compile=train.jit_compile,
        steps_per_execution=steps_per_execution(train.steps_per_execution, steps_per_epoch),
    )


def steps_per_execution(wanted: int, steps_per_epoch: int | None) -> int:
    """The largest count up to `wanted` that divides an epoch.

    So that no call runs across two epochs.
    """
    if not steps_per_epoch:
        return 1
    return max(n for n in range(1, min(wanted, steps_per_epoch) + 1) if steps_per_epoch % n == 0)


def _resolve(spec: ObjectSpec, kind: str, config: Config, path: tuple) -> type:
    """The allowed Keras class named by `spec.type` (optimizers also by lower-case name)."""
    allowed, module = {
        "layer": (LAYERS, keras.layers),
        "augmentation": (AUGMENTATIONS, keras.layers),
        "optimizer": (OPTIMIZERS, keras.optimizers),
    }[kind]
    names = {name: name for name in allowed}
    if kind == "optimizer":
        names.update({name.lower(): name for name in allowed})
    if spec.type in names:
        return getattr(module, names[spec.type])
    hint = (
        "Lambda and layers that run custom code cannot be built from a config"
        if kind == "layer" and spec.type in dir(keras.layers)
        else f"the {kind} types cnnctl builds are listed in the README"
        if kind == "layer"
        else f"augmentation layers: {', '.join(allowed)}"
        if kind == "augmentation"
        else f"choose one of: {', '.join(allowed)}"
    )
    raise ConfigError(
        f"{config.where((*path, 'type'))}: unknown {kind} type "
        f"'{spec.type}'"
        f"{suggest(spec.type, (*allowed, *BLOCK_TYPES) if kind == 'layer' else allowed)}",
        hint,
    )


def _instantiate(
    spec: ObjectSpec, cls: type, config: Config, path: tuple, extra: dict | None = None
) -> Any:
    """`cls(**spec.args)`, after checking each argument's name and kind of value."""
    valid = _arguments_of(cls)
    for key, value in spec.args.items():
        where = config.where((*path, key), at_key=True)
        if key not in valid:
            hint = (
                "give the input size once, as model.input_shape"
                if key in ("input_shape", "input_dim", "batch_input_shape")
                else f"{cls.__name__} takes: {_main_arguments(cls)}"
            )
            raise ConfigError(
                f"{where}: unknown argument of {cls.__name__}{suggest(key, valid)}", hint
            )
        if key == "activation" and isinstance(value, str) and value not in _activations():
            raise ConfigError(
                f"{config.where((*path, key))}: unknown activation "
                f"'{value}'{suggest(value, _activations())}",
                "common ones: relu, gelu, swish, tanh, sigmoid, softmax, linear",
            )
        if not _is_plain(value):
            raise ConfigError(
                f"{config.where((*path, key))}: {spec.type}.{key} must be a plain value "
                f"(number, text, true/false or a list of them), got {type(value).__name__}",
                "nested objects are not built from configs; use a name such as 'he_normal'",
            )
        _check_kind(cls, key, value, config.where((*path, key)))
    args = {key: tuple(v) if isinstance(v, list) else v for key, v in spec.args.items()} | (
        extra or {}
    )
    try:
        return cls(**args)
    except Exception as error:  # Keras validates arguments with many exception types
        named = [key for key in spec.args if f"`{key}`" in str(error) or f"{key}=" in str(error)]
        where = config.where((*path, named[0])) if named else config.where(path)
        raise ConfigError(
            f"{where}: {spec.type}: {first_line(error)}",
            f"check the arguments of {spec.type} against the Keras documentation",
        ) from None


# The kind of value an argument takes where its default does not tell (it has none, or None,
# or a tuple); the others take the kind of their default (int, float, bool).
_KINDS = {
    "filters": "integer",
    "units": "integer",
    "height": "integer",
    "width": "integer",
    "kernel_size": "integers",
    "strides": "integers",
    "pool_size": "integers",
    "dilation_rate": "integers",
    "rate": "number",
    "stddev": "number",
    "scale": "number",
}
_KIND_WORDS = {
    "integer": ("an integer", "32"),
    "integers": ("an integer or a list of integers", "3 or [3, 3]"),
    "number": ("a number", "0.5"),
    "boolean": ("true or false", "true"),
}


def _check_kind(cls: type, key: str, value: Any, where: str) -> None:
    """Refuse a value of the wrong kind (`filters: 32x`) at its own line, before Keras sees it.

    Keras would fail later inside its code (`'<=' not supported between 'str' and 'int'`),
    and the message would point at the layer, not at the value.
    """
    kind = _kind_of(_defaults_of(cls).get(key)) or _KINDS.get(key)  # BatchNorm's scale: a bool
    if kind is None or value is None:
        return

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    fits = {
        "integer": whole(value),
        "integers": whole(value) or (isinstance(value, list) and all(map(whole, value))),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[kind]
    if not fits:
        words, example = _KIND_WORDS[kind]
        raise ConfigError(
            f"{where}: expected {words}, got {value!r}", f"for example {key}: {example}"
        )


def _kind_of(default: Any) -> str | None:
    """An int default also allows a list (`axis: [1, 2]`); a float default any number."""
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "integers"
    if isinstance(default, float):
        return "number"
    return None


def _defaults_of(cls: type) -> dict[str, Any]:
    """Each constructor argument's default, the most derived class's first."""
    defaults: dict[str, Any] = {}
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        for param in inspect.signature(klass.__init__).parameters.values():
            if param.default is not param.empty:
                defaults.setdefault(param.name, param.default)
        if klass in (keras.layers.Layer, keras.optimizers.Optimizer):
            break
    return defaults


MAX_LAYER_PARAMS = 100_000_000  # 400 MB of float32 weights in one layer


def _check_size(layer: Any, shape: tuple, config: Config, path: tuple) -> None:
    """Refuse a layer whose weights or output would not fit in memory.

    Checked before Keras allocates them.
    """
    try:
        out = layer.compute_output_shape(shape)
        params = _weights_of(layer, shape)
    except Exception:  # an impossible layer: `model.add` reports it in Keras' words
        return
    values = 1
    for n in out[1:] if isinstance(out, tuple) else ():
        values *= n if isinstance(n, int) else 1
    if values > limit("activation") or params > MAX_LAYER_PARAMS:
        what = (
            f"{params:,} weights"
            if params > MAX_LAYER_PARAMS
            else f"an output of {values:,} values per image"
        )
        raise ConfigError(
            f"{config.where(path)}: {type(layer).__name__} would have {what}; too large to train",
            "use fewer units or filters, or a smaller input",
        )


def _weights_of(layer: Any, shape: tuple) -> int:
    """The weight count of the common weighted layers, computed without building them."""
    channels = shape[-1] if shape and isinstance(shape[-1], int) else 1
    if isinstance(layer, keras.layers.Dense):
        return (channels + 1) * int(layer.units)
    kernel = 1
    for n in getattr(layer, "kernel_size", ()) or ():
        kernel *= int(n)
    multiplier = int(getattr(layer, "depth_multiplier", 1) or 1)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return kernel * channels * multiplier
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        return kernel * channels * multiplier + channels * multiplier * int(layer.filters)
    if hasattr(layer, "filters") and hasattr(layer, "kernel_size"):
        return (
            kernel * channels // max(int(getattr(layer, "groups", 1) or 1), 1) * int(layer.filters)
        )
    return 0


def _arguments_of(cls: type) -> set[str]:
    """Names the class's constructors accept, up the inheritance chain to Keras' base class."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        for param in inspect.signature(klass.__init__).parameters.values():
            if (
                param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
                and param.name != "self"
            ):
                names.add(param.name)
        if klass in (keras.layers.Layer, keras.optimizers.Optimizer):
            break
    names.discard("kwargs")
    if issubclass(cls, keras.layers.Layer):
        names.update(_COMMON_LAYER_ARGS)
        names.discard("autocast")
    return names


def _activations() -> list[str]:
    """The activation names Keras resolves from a string."""
    skip = {"get", "serialize", "deserialize"}
    return [
        name for name in dir(keras.activations) if not name.startswith("_") and name not in skip
    ]


def _main_arguments(cls: type, shown: int = 8) -> str:
    """The first arguments of the class's own signature, in the order its docs give them."""
    names = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _is_plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and depth < 2 and all(_is_plain(v, depth + 1) for v in value)
