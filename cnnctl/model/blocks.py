"""Blocks: a `Residual` stack, a `Skip` (U-Net level) or a pretrained Keras Applications
`Backbone`, built as one layer.

Each block is a small functional model made only of standard Keras layers, so it
sits in the top-level Sequential as one layer and saves and loads through `.keras`
with safe_mode and the model-file allow-list, with no custom class to register.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cnnctl.config import Config, ObjectSpec
from cnnctl.errors import ConfigError, DataError, ModelFileError, first_line
from cnnctl.suggest import suggest

BLOCK_TYPES = ("Residual", "Skip", "Backbone")
RESIDUAL_ARGS = ("layers", "shortcut", "activation", "name")
SKIP_ARGS = ("layers", "merge", "name")
BACKBONE_ARGS = ("name", "weights", "trainable", "pooling", "decoder", "decoder_filters")
UNET_FILTERS = (256, 128, 64, 32, 16)  # per decoder level, deepest first (segmentation_models')
MAX_WEIGHTS_BYTES = 2 * 2**30
PREPROCESS = "preprocess"  # the name of a Backbone's frozen input-preprocessing layer

# A layer-making function: (spec, input shape, config, path) -> a Keras layer (builder's own).
MakeLayer = Callable[[ObjectSpec, tuple, Config, tuple], Any]


@dataclass(frozen=True)
class Application:
    """What cnnctl needs to know of one keras.applications model."""

    module: str  # keras.src.applications.<module>, for its weights URL
    # its preprocess_input: caffe (BGR, minus mean), tf (-1..1), torch (mean/std), raw (0..255)
    mode: str
    weights: str  # the ImageNet no-top weights file Keras caches in <keras home>/models/
    min_size: int = 32


def _apps() -> dict[str, Application]:
    apps = {
        "MobileNetV2": Application(
            "mobilenet_v2",
            "tf",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        ),
        "MobileNetV3Small": Application(
            "mobilenet_v3", "raw", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
        ),
        "MobileNetV3Large": Application(
            "mobilenet_v3", "raw", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
        ),
        "VGG16": Application("vgg16", "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "VGG19": Application("vgg19", "caffe", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "Xception": Application(
            "xception", "tf", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", 71
        ),
        "InceptionV3": Application(
            "inception_v3", "tf", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", 75
        ),
    }
    for depth in (50, 101, 152):
        apps[f"ResNet{depth}"] = Application(
            "resnet", "caffe", f"resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
        apps[f"ResNet{depth}V2"] = Application(
            "resnet", "tf", f"resnet{depth}v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    for depth in (121, 169, 201):
        apps[f"DenseNet{depth}"] = Application(
            "densenet", "torch", f"densenet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    for b in range(8):
        apps[f"EfficientNetB{b}"] = Application("efficientnet", "raw", f"efficientnetb{b}_notop.h5")
    for b in ("B0", "B1", "B2", "B3", "S", "M", "L"):
        apps[f"EfficientNetV2{b}"] = Application(
            "efficientnet_v2", "raw", f"efficientnetv2-{b.lower()}_notop.h5"
        )
    return apps


APPLICATIONS = _apps()
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def build_block(
    spec: ObjectSpec,
    shape: tuple,
    config: Config,
    path: tuple,
    make: MakeLayer,
    offline: bool = False,
) -> keras.Model:
    """The `Residual`, `Skip` or `Backbone` at `path`, for inputs of `shape` (batch axis first)."""
    if spec.type == "Residual":
        return _residual(spec, shape, config, path, make)
    if spec.type == "Skip":
        return _skip(spec, shape, config, path, make)
    return _backbone(spec, shape, config, path, offline)


def walk_layers(layer: Any) -> Iterator[Any]:
    """Every layer inside `layer`, depth first in a fixed order.

    Blocks hold layers of their own.
    """
    for inner in getattr(layer, "layers", ()):
        yield inner
        yield from walk_layers(inner)


def _check_args(spec: ObjectSpec, allowed: tuple[str, ...], config: Config, path: tuple) -> None:
    for key in spec.args:
        if key not in allowed:
            raise ConfigError(
                f"{config.where((*path, key), at_key=True)}: unknown argument of "
                f"{spec.type}{suggest(key, allowed)}",
                f"{spec.type} takes: {', '.join(allowed)}",
            )


def _choice(
    spec: ObjectSpec, key: str, choices: tuple, default: Any, config: Config, path: tuple
) -> Any:
    value = spec.args.get(key, default)
    if value not in choices:
        shown = ", ".join(str(c) for c in choices if c is not None)
        names = shown.split(", ")
        raise ConfigError(
            f"{config.where((*path, key))}: unknown value {value!r}{suggest(str(value), names)}",
            f"choose one of: {shown}",
        )
    return value


# --------------------------------------------------------------------------- Residual


def _residual(
    spec: ObjectSpec, shape: tuple, config: Config, path: tuple, make: MakeLayer
) -> keras.Model:
    """layers(x) + shortcut(x).

    The shortcut is x itself, or a 1x1 projection where the shapes differ.
    """
    _check_args(spec, RESIDUAL_ARGS, config, path)
    if not spec.layers:
        raise ConfigError(
            f"{config.where(path)}: a Residual block needs `layers:`, the layers of its main path",
            "for example layers: [{type: Conv2D, filters: 32, kernel_size: 3, padding: same}]",
        )
    shortcut = _choice(spec, "shortcut", ("projection", "identity"), "projection", config, path)
    name = spec.args.get("name") or "residual_" + "_".join(
        str(p) for p in path[2:] if isinstance(p, int)
    )
    inputs = keras.Input(shape=tuple(shape[1:]))
    x = _path(spec, inputs, config, path, make)
    where = config.where((*path, "shortcut") if "shortcut" in spec.args else path)
    outputs = keras.layers.Add(name=f"{name}_add")([x, _shortcut(inputs, x, shortcut, where, name)])
    if spec.args.get("activation") is not None:
        try:
            outputs = keras.layers.Activation(spec.args["activation"], name=f"{name}_out")(outputs)
        except Exception as error:
            raise ConfigError(
                f"{config.where((*path, 'activation'))}: {first_line(error)}",
                "use a Keras activation name such as relu",
            ) from None
    return keras.Model(inputs, outputs, name=name)


def _path(spec: ObjectSpec, inputs: Any, config: Config, path: tuple, make: MakeLayer) -> Any:
    """A block's own layers applied to `inputs`, each mistake named at its line."""
    x = inputs
    for index, inner in enumerate(spec.layers or ()):
        where = (*path, "layers", index)
        if inner.type == "Backbone":
            raise ConfigError(
                f"{config.where(where)}: a Backbone cannot sit inside a {spec.type} block",
                "put the Backbone in model.layers itself",
            )
        layer = make(inner, tuple(x.shape), config, where)
        try:
            x = layer(x)
        except Exception as error:  # Keras raises many kinds for impossible shapes
            raise ConfigError(
                f"{config.where(where)}: {inner.type} cannot take an input of shape "
                f"{tuple(x.shape)}: {first_line(error)}",
                "check the sizes of this layer and of the layers before it",
            ) from None
    return x


# --------------------------------------------------------------------------- Skip


def _skip(spec: ObjectSpec, shape: tuple, config: Config, path: tuple, make: MakeLayer) -> Any:
    """merge(x, layers(x)): a U-Net level. The path must give back the height and width it was
    given (pool, then upsample), so that its output lines up with its input pixel for pixel."""
    _check_args(spec, SKIP_ARGS, config, path)
    if not spec.layers:
        raise ConfigError(
            f"{config.where(path)}: a Skip block needs `layers:`, the layers of its path",
            "for example layers: [MaxPooling2D, {type: Conv2D, filters: 32, kernel_size: 3, "
            "padding: same}, {type: UpSampling2D, size: 2}]",
        )
    merge = _choice(spec, "merge", ("concatenate", "add"), "concatenate", config, path)
    name = spec.args.get("name") or "skip_" + "_".join(
        str(p) for p in path[2:] if isinstance(p, int)
    )
    inputs = keras.Input(shape=tuple(shape[1:]))
    x = _path(spec, inputs, config, path, make)
    a, b = tuple(inputs.shape[1:]), tuple(x.shape[1:])
    if len(a) != len(b) or a[:-1] != b[:-1]:
        raise ConfigError(
            f"{config.where(path)}: the Skip block's layers turn shape {a} into {b}; its path "
            "must keep height and width",
            "upsample as often as you pool inside the block (UpSampling2D or Conv2DTranspose "
            "with strides 2 after each MaxPooling2D), with padding: same",
        )
    if merge == "add" and a != b:
        where = config.where((*path, "merge"))
        raise ConfigError(
            f"{where}: merge: add needs the path to keep the channels too; it turns {a} into {b}",
            f"set merge: concatenate, or end the path with {a[-1]} filters",
        )
    merged = (
        keras.layers.Concatenate(name=f"{name}_concat")([inputs, x])
        if merge == "concatenate"
        else keras.layers.Add(name=f"{name}_add")([inputs, x])
    )
    return keras.Model(inputs, merged, name=name)


def _shortcut(inputs: Any, outputs: Any, mode: str, where: str, name: str) -> Any:
    """`inputs` as they are, or projected to `outputs`' shape.

    The projection: (pooling,) 1x1 Conv2D or Dense, BatchNormalization.
    """
    a, b = tuple(inputs.shape[1:]), tuple(outputs.shape[1:])
    if a == b:
        return inputs
    if mode == "identity":
        raise ConfigError(
            f"{where}: the block's layers turn shape {a} into {b}, so its input cannot be "
            "added to their output",
            "set shortcut: projection, or keep the shape",
        )
    if len(a) == len(b) == 3:
        strides = tuple(_stride(n, m) for n, m in zip(a[:2], b[:2], strict=True))
        if None not in strides:
            x = inputs
            if strides != (1, 1):
                # Pool, then a 1x1 convolution (ResNet-D's shortcut). A 1x1 convolution with strides
                # crashes TensorFlow 2.21's oneDNN kernels on a batch of another size (the last
                # one).
                x = keras.layers.AveragePooling2D(
                    strides, strides=strides, padding="same", name=f"{name}_pool"
                )(x)
            x = keras.layers.Conv2D(b[2], 1, use_bias=False, name=f"{name}_project")(x)
            return keras.layers.BatchNormalization(name=f"{name}_project_bn")(x)
    elif len(a) == len(b) == 1:
        x = keras.layers.Dense(b[0], use_bias=False, name=f"{name}_project")(inputs)
        return keras.layers.BatchNormalization(name=f"{name}_project_bn")(x)
    raise ConfigError(
        f"{where}: cannot project the shortcut from shape {a} to {b}",
        "a projection keeps the number of axes and shrinks height and width by a whole stride",
    )


def _stride(size: Any, out: Any) -> int | None:
    """The stride of a 'same' 1x1 convolution that takes `size` to `out`, if there is one."""
    if not isinstance(size, int) or not isinstance(out, int) or out < 1 or out > size:
        return None
    stride = math.ceil(size / out)
    return stride if math.ceil(size / stride) == out else None


# --------------------------------------------------------------------------- Backbone


def _backbone(
    spec: ObjectSpec, shape: tuple, config: Config, path: tuple, offline: bool
) -> keras.Model:
    """Frozen preprocessing (as the application's preprocess_input does it) -> the application;
    with `decoder: unet`, a U-Net decoder after it back to the input's height and width."""
    _check_args(spec, BACKBONE_ARGS, config, path)
    app_name = spec.args.get("name")
    if app_name not in APPLICATIONS:
        raise ConfigError(
            f"{config.where((*path, 'name'))}: unknown Backbone {app_name!r}"
            f"{suggest(str(app_name), list(APPLICATIONS))}",
            f"choose one of: {', '.join(APPLICATIONS)}",
        )
    app = APPLICATIONS[app_name]
    decoder = _choice(spec, "decoder", ("none", "unet"), "none", config, path)
    default_pooling = "none" if decoder == "unet" else "avg"
    pooling = _choice(spec, "pooling", ("avg", "max", "none", None), default_pooling, config, path)
    if decoder == "unet" and pooling not in ("none", None):
        raise ConfigError(
            f"{config.where((*path, 'pooling'))}: a U-Net decoder needs the encoder's feature "
            f"map, not pooling: {pooling}",
            "remove pooling (decoder: unet keeps every position)",
        )
    if decoder == "none" and "decoder_filters" in spec.args:
        raise ConfigError(
            f"{config.where((*path, 'decoder_filters'), at_key=True)}: decoder_filters needs "
            "decoder: unet",
            "add decoder: unet, or remove decoder_filters",
        )
    pooling = None if pooling == "none" else pooling
    weights = spec.args.get("weights", "imagenet")
    if not isinstance(weights, str):
        raise ConfigError(
            f"{config.where((*path, 'weights'))}: must be imagenet, none or a .weights.h5 path, "
            f"got {weights!r}",
            "for example weights: imagenet",
        )
    trainable = spec.args.get(
        "trainable", weights == "none"
    )  # random weights are only worth training
    if not isinstance(trainable, bool):
        raise ConfigError(
            f"{config.where((*path, 'trainable'))}: must be true or false, got {trainable!r}"
        )
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ConfigError(
            f"{config.where(path)}: {app_name} takes images of 1 or 3 channels, got shape {shape}",
            "put the Backbone first in model.layers, on grayscale or RGB images",
        )
    height, width = shape[1], shape[2]
    if height < app.min_size or width < app.min_size:
        raise ConfigError(
            f"{config.where(path)}: {app_name} needs images of at least "
            f"{app.min_size}x{app.min_size}, "
            f"got {height}x{width}",
            f"put {{type: Resizing, height: {app.min_size}, width: {app.min_size}}} before it, or "
            "use larger images",
        )
    local = None
    if weights == "imagenet":
        _need_imagenet_file(app_name, app, (height, width), config, path, offline)
    elif weights != "none":
        local = _weights_file(weights, config, path)
    inputs = keras.Input(shape=tuple(shape[1:]))
    pre = keras.layers.Dense(3, name=PREPROCESS, trainable=False, dtype="float32")
    x = pre(inputs)
    pre.set_weights(
        preprocess_weights(app.mode, shape[-1], 255.0 if config.data.normalize else 1.0)
    )
    model = _application(app_name, app, (height, width), pooling, weights, config, path)
    if local is not None:
        try:
            with warnings.catch_warnings():
                # Keras loads what matches and warns about the rest ("Skipping nested container
                # ... will retain their freshly-initialized weights"): a file of another model
                # is refused whole, never half-loaded.
                warnings.filterwarnings("error", message="Skipping (nested container|variable)")
                model.load_weights(local)
        except Exception as error:  # Keras and h5py raise many kinds for a file of another model
            raise DataError(
                f"{config.where((*path, 'weights'))}: {local} does not hold weights of "
                f"{app_name} ({first_line(error)})",
                f"give a .weights.h5 saved from keras.applications.{app_name}(include_top=False)",
            ) from None
    model.trainable = trainable
    index = "_".join(str(p) for p in path[2:] if isinstance(p, int))
    if decoder == "unet":
        return _unet(model, inputs, x, spec, config, path, f"backbone_{index}")
    return keras.Model(inputs, model(x), name=f"backbone_{index}")


def _unet(
    app: keras.Model,
    inputs: Any,
    x: Any,
    spec: ObjectSpec,
    config: Config,
    path: tuple,
    name: str,
) -> keras.Model:
    """The application as a U-Net's encoder (Ronneberger et al., 2015): at each level, upsample,
    concatenate the encoder's last feature map of that size, then two 3x3 Conv-BN-ReLU; a last
    level without skip back to the input's size (as segmentation_models' Unet).

    The skips are found, not listed per application: the last layer at each height the
    encoder passes through, where the height at least halves (`unet_levels`).
    """
    height = inputs.shape[1]
    sizes = [
        (layer.name, layer.output.shape[1])
        for layer in app.layers
        if len(getattr(layer.output, "shape", ())) == 4
        and not isinstance(layer, keras.layers.ZeroPadding2D)  # a pad is no level
    ]
    skips = unet_levels(sizes, height)
    encoder = keras.Model(
        app.input, [app.get_layer(n).output for n in skips] + [app.output], name=app.name
    )
    levels = len(skips) + 1
    filters = spec.args.get("decoder_filters", list(UNET_FILTERS[:levels]))
    if len(UNET_FILTERS) < levels and "decoder_filters" not in spec.args:
        filters = list(UNET_FILTERS) + [UNET_FILTERS[-1]] * (levels - len(UNET_FILTERS))
    if (
        not isinstance(filters, list)
        or len(filters) != levels
        or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters)
    ):
        raise ConfigError(
            f"{config.where((*path, 'decoder_filters'))}: {spec.args['name']} at this size has "
            f"{levels} decoder levels; give {levels} positive whole numbers, got {filters!r}",
            f"for example decoder_filters: {list(UNET_FILTERS[:levels])}",
        )
    *features, y = encoder(x)
    targets = [*reversed(features), inputs]
    for level, (skip, width) in enumerate(zip(targets, filters, strict=True)):
        size = tuple(skip.shape[1:3])
        if tuple(y.shape[1:3]) == (size[0] // 2, size[1] // 2) and size[0] % 2 == size[1] % 2 == 0:
            y = keras.layers.UpSampling2D(2, name=f"{name}_up{level}")(y)
        else:  # valid-padded encoders (Inception, Xception) do not halve exactly
            y = keras.layers.Resizing(*size, "bilinear", name=f"{name}_up{level}")(y)
        if skip is not inputs:
            y = keras.layers.Concatenate(name=f"{name}_concat{level}")([y, skip])
        for conv in range(2):
            y = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, name=f"{name}_dec{level}_conv{conv}"
            )(y)
            y = keras.layers.BatchNormalization(name=f"{name}_dec{level}_bn{conv}")(y)
            y = keras.layers.Activation("relu", name=f"{name}_dec{level}_relu{conv}")(y)
    return keras.Model(inputs, y, name=name)


def unet_levels(sizes: list[tuple[str, int]], height: int) -> list[str]:
    """The skip layers of an encoder, shallowest first: from (layer name, output height) in the
    encoder's order, the last layer of each height that is at most 2/3 of the previous level's
    (the input's first), before the encoder's deepest height."""
    deepest = sizes[-1][1]
    last_of: dict[int, str] = {}
    for layer, size in sizes:
        last_of[size] = layer
    chosen, above = [], height
    for size in sorted(last_of, reverse=True):
        if deepest < size <= above * 2 / 3:
            chosen.append(last_of[size])
            above = size
    return chosen


def preprocess_weights(mode: str, channels: int, scale: float) -> list[np.ndarray]:
    """Kernel and bias of one Dense(3) over the channel axis that does `mode`'s preprocess_input.

    `scale` turns the model's input into 0..255 pixels (255 after cnnctl's Rescaling(1/255));
    a grayscale input is spread to three equal channels.
    """
    if mode == "caffe":  # RGB -> BGR, minus the ImageNet mean in 0..255
        kernel, bias = np.eye(3)[::-1] * scale, -_CAFFE_MEAN_BGR
    elif mode == "tf":  # -1..1
        kernel, bias = np.eye(3) * scale / 127.5, -np.ones(3)
    elif mode == "torch":  # 0..1, then the ImageNet mean and standard deviation
        kernel, bias = np.diag(scale / 255.0 / _IMAGENET_STD), -_IMAGENET_MEAN / _IMAGENET_STD
    else:  # the application rescales inside itself, from 0..255
        kernel, bias = np.eye(3) * scale, np.zeros(3)
    if channels == 1:
        kernel = kernel.sum(axis=0, keepdims=True)
    return [kernel.astype("float32"), bias.astype("float32")]


def _application(
    app_name: str,
    app: Application,
    size: tuple[int, int],
    pooling: str | None,
    weights: str,
    config: Config,
    path: tuple,
) -> keras.Model:
    build = getattr(keras.applications, app_name)
    try:
        return build(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(*size, 3),
            pooling=pooling,
        )
    except Exception as error:
        if weights == "imagenet" and (
            "URL fetch failure" in str(error) or isinstance(error, OSError)
        ):
            raise _imagenet_missing(app_name, app, size, config, path) from None
        raise ConfigError(f"{config.where(path)}: {app_name}: {first_line(error)}") from None


def _need_imagenet_file(
    app_name: str,
    app: Application,
    size: tuple[int, int],
    config: Config,
    path: tuple,
    offline: bool,
) -> None:
    """Offline, the ImageNet file must already be where Keras looks for it."""
    if offline and not (_keras_models_dir(for_reading=True) / _file_name(app, size)).is_file():
        raise _imagenet_missing(app_name, app, size, config, path)


def _imagenet_missing(
    app_name: str, app: Application, size: tuple[int, int], config: Config, path: tuple
) -> DataError:
    name = _file_name(app, size)
    try:
        module = __import__(f"keras.src.applications.{app.module}", fromlist=["_"])
        base = getattr(module, "BASE_WEIGHTS_PATH", None) or getattr(module, "BASE_WEIGHT_PATH", "")
    except ImportError:
        base = ""
    url = f" (from {base}{name})" if base.startswith("https://") else ""
    return DataError(
        f"{config.where((*path, 'weights'))}: the ImageNet weights of {app_name} are not here "
        f"and cannot be downloaded: {name}",
        f"download it{url} into {_keras_models_dir(for_reading=False)}/, or set weights: none "
        "or a path to a .weights.h5 file",
    )


def _file_name(app: Application, size: tuple[int, int]) -> str:
    rows = (
        size[0] if size[0] == size[1] and size[0] in (96, 128, 160, 192, 224) else 224
    )  # as MobileNetV2
    return app.weights.format(rows=rows)


def _keras_models_dir(for_reading: bool) -> Path:
    """Where keras.utils.get_file caches application weights (it falls back to /tmp/.keras)."""
    try:
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if for_reading and not os.access(os.path.expanduser(home), os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return Path(os.path.expanduser(home)) / "models"


def _weights_file(text: str, config: Config, path: tuple) -> Path:
    """A local weights file: a regular .h5 file of a sane size, whose shapes fit its bytes."""
    where = config.where((*path, "weights"))
    file = Path(text)
    if not text.endswith(".h5"):
        raise ConfigError(
            f"{where}: {text!r} is not imagenet, none or a .weights.h5 file",
            "save one with model.save_weights('name.weights.h5')",
        )
    try:
        info = file.stat()
    except OSError:
        raise DataError(
            f"{where}: {text}: no such file",
            "the path is read relative to the folder you run cnnctl in",
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{where}: {text}: not a regular file")
    if info.st_size > MAX_WEIGHTS_BYTES:
        raise DataError(
            f"{where}: {text}: {info.st_size:,} bytes is too large for a backbone's weights"
        )
    from cnnctl.modelfile.weights import check_h5_file

    try:  # the same check as a model file's weights: declared sizes, then all of it, in a child
        check_h5_file(file, file)  # process with a deadline (damaged HDF5 can hang the library)
    except ModelFileError as error:
        raise DataError(f"{where}: {error.message}", error.hint) from None
    return file
