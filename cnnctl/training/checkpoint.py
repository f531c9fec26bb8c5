"""The checkpoint format: `checkpoints/last.keras` with the resume state inside its zip.

Keras keeps no callback state in its archive; we store ours as one more member of
the same file, so a checkpoint and the state it needs can never disagree.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np

from cnnctl.model.blocks import walk_layers
from cnnctl.runs import STATE_MEMBER
from cnnctl.training.state import ResumeState


def save_with_state(model: keras.Model, path: Path, state: ResumeState) -> None:
    """`model.save(path)`, then the state as one more member of the same zip."""
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(STATE_MEMBER, state.model_dump_json())


def rng_state(model: keras.Model) -> list[list[int]]:
    """Dropout and other random layers keep their generator state out of the weights file."""
    return [
        np.asarray(layer.seed_generator.state).tolist()
        for layer in walk_layers(model)
        if hasattr(layer, "seed_generator")
    ]


def restore_rng(model: keras.Model, states: list[list[int]]) -> None:
    layers = [layer for layer in walk_layers(model) if hasattr(layer, "seed_generator")]
    for layer, value in zip(layers, states, strict=False):
        layer.seed_generator.state.assign(np.asarray(value, dtype=layer.seed_generator.state.dtype))
