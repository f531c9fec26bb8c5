"""Test-time augmentation: a model scored as the mean of its outputs on an image and its mirror.

Validation during training stays plain (one pass per image); only the final scores and
predictions pay the second pass. Wrapping, rather than a layer in the saved model, keeps
model.keras a plain Sequential that exports and loads anywhere. Where the task's outputs
have the image's height and width, the mirror's output is mirrored back before the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnctl.modelfile.exported import ExportedModel
from cnnctl.tasks import Task, task_named


def with_tta(model: Any, mode: str, task: Task | None = None) -> Any:
    """`model`, or a model that merges it over the image and its mirror (same interface)."""
    if mode == "none":
        return model
    task = task or task_named("classification")
    if isinstance(model, ExportedModel):
        return _MirroredExported(model, task)
    import keras

    inputs = keras.Input(shape=model.input_shape[1:])
    mirrored = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2))(inputs)  # never saved
    back = model(mirrored)
    if task.spatial_output:
        back = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2))(back)
    outputs = keras.layers.Average()([model(inputs), back])
    averaged = keras.Model(inputs, outputs, name=f"{model.name}_tta")
    if model.compiled:  # the same loss and metrics, so scores read as the plain model's do
        settings = model.get_compile_config()
        settings.pop("optimizer", None)
        averaged.compile_from_config(settings)
    return averaged


class _MirroredExported(ExportedModel):
    """An exported model whose every call merges the image's and its mirror's outputs."""

    def __init__(self, model: ExportedModel, task: Task) -> None:
        super().__init__(model.path, model._run, model.input_shape[1:], model.output_shape[1:])
        self._task = task

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        plain = super().__call__(batch)
        mirrored = super().__call__(batch[:, :, ::-1])
        if self._task.spatial_output:
            mirrored = mirrored[:, :, ::-1]
        return self._task.merge_tta(plain, mirrored)
