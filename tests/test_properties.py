"""Property tests: whatever a person writes, cnnctl builds the model or says what's wrong and where.

Never a traceback, never exit 1, never a crash of TensorFlow itself. A fixed number of
examples with a fixed seed (derandomize) keeps CI repeatable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnctl.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [
    yaml.safe_load((REPO / "configs" / name).read_text())
    for name in ("mnist.yaml", "fashion_mnist.yaml")
]
RUNS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PLACE = re.compile(r"^Error: (x\.yaml(:\d+:\d+)?|--set .*?): ", re.MULTILINE)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 10, 28, 10**9, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["relu", "softmax", "same", "valid", "Dense", "Conv2D", "adam", "ünïcødé", "💥", "", "1e-3"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths_of(child, (*prefix, index))
    return found


def check(runner, text: str, overrides: tuple[str, ...] = ()) -> None:
    Path("x.yaml").write_text(text, encoding="utf-8")
    args = ["validate", "x.yaml"]
    for override in overrides:
        args += ["--set", override]
    result = runner.invoke(main, args)
    assert result.exit_code in (0, 2), (text, overrides, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert PLACE.search(result.stderr), (text, overrides, result.stderr)
        quoted = re.compile(r"\s+\d* \| ")  # the file's line and a caret under the spot
        said = [line for line in result.stderr.strip().splitlines() if not quoted.match(line)]
        assert len(said) <= 2, result.stderr


@RUNS
@given(text=st.text(max_size=200))
def test_any_text_as_a_config(runner, text):
    check(runner, text)


@RUNS
@given(document=values)
def test_any_yaml_document(runner, document):
    check(runner, yaml.safe_dump(document, allow_unicode=True))


@st.composite
def mutated(draw) -> dict:
    config = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(SHIPPED))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(config)))
        *parents, last = path
        node = config
        for part in parents:
            node = node[part]
        if draw(st.booleans()) and isinstance(node, dict):
            del node[last]
        else:
            node[last] = draw(values)
        if not paths_of(config):
            break
    return config


@RUNS
@given(config=mutated())
def test_mutated_shipped_configs(runner, config):
    check(runner, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


@RUNS
@given(
    lines=st.lists(
        st.sampled_from((REPO / "configs" / "mnist.yaml").read_text().splitlines()), min_size=1
    )
)
def test_shuffled_and_duplicated_lines(runner, lines):
    check(runner, "\n".join(lines) + "\n")


@RUNS
@given(data=st.data())
def test_random_overrides(runner, data):
    keys = [".".join(str(p) for p in path) for path in paths_of(SHIPPED[0])]
    key = data.draw(st.one_of(st.sampled_from(keys), st.text(max_size=15)))
    value = data.draw(
        st.one_of(st.text(max_size=20), values.map(lambda v: yaml.safe_dump(v).strip()))
    )
    check(runner, (REPO / "configs" / "mnist.yaml").read_text(), (f"{key}={value}",))


@RUNS
@given(
    layer=st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "Conv2D",
                    "Dense",
                    "MaxPooling2D",
                    "Dropout",
                    "BatchNormalization",
                    "UpSampling2D",
                    "Reshape",
                    "DepthwiseConv2D",
                    "SeparableConv2D",
                    "Conv2DTranspose",
                ]
            )
        },
        optional={
            "filters": values,
            "units": values,
            "kernel_size": values,
            "pool_size": values,
            "rate": values,
            "strides": values,
            "padding": values,
            "size": values,
            "target_shape": values,
            "activation": values,
            "depth_multiplier": values,
            "dilation_rate": values,
        },
    )
)
def test_random_layers_in_the_seed_network(runner, layer):
    config = yaml.safe_load(yaml.safe_dump(SHIPPED[0]))
    config["model"]["layers"].insert(1, layer)
    check(runner, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
