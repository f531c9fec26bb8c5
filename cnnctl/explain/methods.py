"""The map methods: which pixels made the model give the output it gave.

Every method takes a batch of images (N, H, W, C) as the model takes them and, per image,
`weights` shaped like one output: the explained score is sum(weights * output) (a one-hot
vector picks a class; a mask of pixels picks a class's region of a segmentation). Every
method returns one map per image, float32 (N, H, W), in 0..1 (1: what mattered most).

The gradient methods differentiate the score before the last softmax or sigmoid and run
batched in one traced TensorFlow function; occlusion only calls the model, so it works for
exported .onnx / .tflite files too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnctl.explain import LAYER_METHODS
from cnnctl.explain.layers import linear_head, recording
from cnnctl.limits import EVAL_BATCH


def gradient_maps(
    model: Any,
    images: np.ndarray,
    weights: np.ndarray,
    method: str,
    layer: Any = None,
    batch_size: int = EVAL_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps by `method` (gradcam, gradcam++, saliency, input-x-gradient) and the outputs.

    Grad-CAM and Grad-CAM++ are read at `layer` (a convolution, at any depth of nesting);
    the other methods at the input, whatever `layer` is.
    """
    layer = layer if method in LAYER_METHODS else None
    step = _traced(model, method, layer, images.shape[1:], weights.shape[1:])
    maps, outputs = [], []
    for start in range(0, len(images), batch_size):
        found, out = step(
            np.ascontiguousarray(images[start : start + batch_size], np.float32),
            np.ascontiguousarray(weights[start : start + batch_size], np.float32),
        )
        maps.append(found.numpy())
        outputs.append(np.asarray(out))
    return np.concatenate(maps).astype(np.float32), np.concatenate(outputs)


# A model's traced map functions, kept while the model lives: tracing costs more than
# mapping a hundred images, and evaluate and the bench map the same model more than once.
_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model: Any, method: str, layer: Any, image_shape: tuple, weight_shape: tuple) -> Any:
    """One traced TensorFlow function: (images, weights) -> (maps, outputs)."""
    key = (method, id(layer), tuple(image_shape), tuple(weight_shape))
    kept = _TRACES.setdefault(model, {})
    if key not in kept:
        kept[key] = (_trace(model, method, layer, image_shape, weight_shape), layer)
    return kept[key][0]


def _trace(model: Any, method: str, layer: Any, image_shape: tuple, weight_shape: tuple) -> Any:
    """Trace the map function while the model's head is linear and `layer` is recorded: the
    graph keeps both, so it runs later without either."""
    import tensorflow as tf

    combine = {
        "gradcam": gradcam,
        "gradcam++": gradcam_plus_plus,
        "saliency": saliency,
        "input-x-gradient": input_x_gradient,
    }[method]
    height, width = image_shape[:2]
    with linear_head(model) as activation, recording([layer] if layer is not None else []) as seen:

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, *image_shape), tf.float32),
                tf.TensorSpec((None, *weight_shape), tf.float32),
            ]
        )
        def step(x: Any, w: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                tape.watch(x)
                raw = tf.cast(model(x, training=False), tf.float32)
                # Each image's score depends on its own pixels only (inference mode), so the
                # gradient of the batch's scores is every image's own gradient at once.
                score = tf.reduce_sum(tf.reshape(raw * w, (tf.shape(x)[0], -1)), axis=1)
                target = x if layer is None else seen[0][-1]
            grads = tf.cast(tape.gradient(score, target), tf.float32)
            found = combine(tf.cast(target, tf.float32), grads)
            if found.shape[1:3] != (height, width):
                found = tf.image.resize(found[..., None], (height, width), "bilinear")[..., 0]
            return _unit(found), activation(raw)

        return step.get_concrete_function()


def gradcam(activations: Any, grads: Any) -> Any:
    """Grad-CAM (Selvaraju et al., ICCV 2017), weighting each position's activations by the
    gradient there (HiResCAM, Draelos & Carin, 2020):

    L^c_ij = ReLU(sum_k dy^c / dA_ij^k * A_ij^k)

    Where the features are globally averaged (the paper's setting) the gradient is the same
    at every position, and this is the paper's alpha_k^c = 1/Z sum_ij dy^c / dA_ij^k,
    L^c = ReLU(sum_k alpha_k^c A^k) exactly. Where a Flatten keeps the positions (the seed
    network) the paper's averages mix them up: they left 68% of a small MNIST network's
    maps empty and lost the deletion test on 71% of its images; the positional weights
    won it on every image (README, "Explain").
    """
    import tensorflow as tf

    return tf.nn.relu(tf.reduce_sum(grads * activations, axis=-1))


def gradcam_plus_plus(activations: Any, grads: Any) -> Any:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 with the exponential score).

    With Y^c = exp(S^c) the higher derivatives are powers of the first, g = dS^c/dA:
    alpha_ij^kc = g^2 / (2 g^2 + sum_ab A_ab^k g^3),
    w_k^c = sum_ij alpha_ij^kc ReLU(g_ij), L^c = ReLU(sum_k w_k^c A^k).
    """
    import tensorflow as tf

    g2, g3 = grads**2, grads**3
    denominator = 2.0 * g2 + tf.reduce_sum(activations, axis=(1, 2), keepdims=True) * g3
    safe = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
    alpha = tf.where(denominator != 0.0, g2 / safe, tf.zeros_like(g2))
    w = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(w * activations, axis=-1))


def saliency(images: Any, grads: Any) -> Any:
    """Vanilla gradient saliency (Simonyan et al., ICLR workshop 2014, section 3.1):
    M_ij = max_c |dS^c / dI_ijc|."""
    import tensorflow as tf

    return tf.reduce_max(tf.abs(grads), axis=-1)


def input_x_gradient(images: Any, grads: Any) -> Any:
    """Input x gradient (Shrikumar et al., 2016; Ancona et al., ICLR 2018), the part of the
    score each pixel's value carries: M_ij = ReLU(sum_c I_ijc dS / dI_ijc).

    It is the first-order estimate of how far the score falls when a pixel is set to 0, and
    what Grad-CAM's positional weights (above) give when read at the input: a pixel that is
    already 0 scores 0. Pixel-sharp, where Grad-CAM marks the regions of its layer; the one
    map that passes the deletion test with black removal on the seed network (README).
    """
    import tensorflow as tf

    return tf.nn.relu(tf.reduce_sum(grads * images, axis=-1))


def _unit(maps: Any) -> Any:
    """Each map divided by its largest value (an all-zero map stays zero)."""
    import tensorflow as tf

    top = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.where(top > 0, maps / tf.where(top > 0, top, 1.0), tf.zeros_like(maps))


def occlusion_maps(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    weights: np.ndarray,
    patch: int | None = None,
    stride: int | None = None,
    batch_size: int = EVAL_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014, section 4.2) and the outputs.

    A square of the image's mean value slides over it; a pixel's value is how far the
    explained score fell, on average, while a square covered it (a rise counts as 0).
    `predict` is any "images -> outputs" callable: a Keras model or an exported file's runtime.
    """
    n, height, width = images.shape[:3]
    patch = patch or max(2, round(min(height, width) / 7))
    stride = stride or max(1, patch // 2)
    tops = list(range(0, max(height - patch, 0) + 1, stride))
    lefts = list(range(0, max(width - patch, 0) + 1, stride))
    if tops[-1] + patch < height:
        tops.append(height - patch)
    if lefts[-1] + patch < width:
        lefts.append(width - patch)
    places = [(t, left) for t in tops for left in lefts]
    outputs = _batched(predict, images, batch_size)
    base = _score(outputs, weights)
    maps = np.zeros((n, height, width), np.float32)
    for i in range(n):
        fill = images[i].mean(axis=(0, 1), keepdims=True)
        covered = np.repeat(images[i][None], len(places), axis=0)
        for j, (t, left) in enumerate(places):
            covered[j, t : t + patch, left : left + patch] = fill
        drop = base[i] - _score(
            _batched(predict, covered, batch_size),
            np.broadcast_to(weights[i], (len(places),) + weights.shape[1:]),
        )
        total = np.zeros((height, width), np.float64)
        count = np.zeros((height, width), np.float64)
        for (t, left), value in zip(places, drop, strict=True):
            total[t : t + patch, left : left + patch] += value
            count[t : t + patch, left : left + patch] += 1
        found = np.maximum(total / np.maximum(count, 1), 0)
        top = found.max()
        maps[i] = found / top if top > 0 else found
    return maps, outputs


def _batched(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(predict(x[i : i + size]), dtype=np.float32) for i in range(0, len(x), size)]
    )


def _score(outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (outputs * weights).reshape(len(outputs), -1).sum(axis=1)
