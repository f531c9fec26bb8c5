"""Config loading: YAML with line marks, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cnnctl.config import Config, Source, dump_config, load_config, parse_yaml
from cnnctl.errors import ConfigError

from conftest import SMALL

REPO = Path(__file__).resolve().parents[1]
BASE = "data:\n  dataset: mnist\nmodel:\n  input_shape: [28, 28, 1]\n  layers: [Flatten]\n"


def error_of(write, text: str, overrides=()) -> str:
    path = write("x.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.exit_code == 2
    return info.value.format_message()


def test_seed_config_is_the_keras_example():
    config = load_config(REPO / "configs" / "mnist.yaml")
    assert config.name == "mnist"
    assert config.data.dataset == "mnist" and config.data.validation == "test"
    assert [layer.type for layer in config.model.layers] == [
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert config.model.layers[0].args == {
        "filters": 32,
        "kernel_size": [3, 3],
        "activation": "relu",
    }
    assert config.model.layers[4].args == {"rate": 0.5}
    assert (config.train.epochs, config.train.batch_size, config.train.loss) == (
        10,
        32,
        "categorical_crossentropy",
    )
    assert config.train.optimizer.type == "adam" and config.train.metrics == ["accuracy"]


def test_name_defaults_to_the_file_stem(write):
    assert load_config(write("my exp.yaml", BASE)).name == "my-exp"


def test_scientific_notation_is_a_number(write):
    config = load_config(
        write("x.yaml", BASE + "train:\n  optimizer: {type: Adam, learning_rate: 1e-3}\n")
    )
    assert config.train.optimizer.args["learning_rate"] == pytest.approx(0.001)


def test_overrides_use_dotted_paths_and_list_indices(write):
    config = load_config(
        REPO / "configs" / "mnist.yaml",
        ["train.epochs=3", "model.layers.0.filters=64", "data.validation=0.1"],
    )
    assert config.train.epochs == 3
    assert config.model.layers[0].args["filters"] == 64
    assert config.data.validation == 0.1


def test_overrides_take_the_bracket_paths_that_errors_print():
    config = load_config(
        REPO / "configs" / "fashion_mnist_resnet.yaml",
        ["model.layers[0].filters=24", "model.layers[3].layers[0].filters=40"],
    )
    assert config.model.layers[0].args["filters"] == 24
    assert config.model.layers[3].layers[0].args["filters"] == 40


def test_resolved_config_round_trips(write):
    config = load_config(REPO / "configs" / "mnist.yaml", ["train.epochs=3"])
    again = load_config(write("resolved.yaml", dump_config(config)))
    assert again.model_dump() == config.model_dump()
    assert "kernel_size: [3, 3]" in dump_config(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data: [\n", "x.yaml:2:1: invalid YAML"),
        ("trian: {}\n" + BASE, "x.yaml:1:1: trian: unknown key (did you mean 'train'?)"),
        (
            BASE + "train:\n  epochs: ten\n",
            "x.yaml:7:11: train.epochs: Input should be a valid integer (got 'ten')",
        ),
        (
            BASE + "train:\n  epochs: -3\n",
            "x.yaml:7:11: train.epochs: Input should be greater than 0",
        ),
        (
            BASE + "train:\n  optimzer: adam\n",
            "x.yaml:7:3: train.optimzer: unknown key (did you mean 'optimizer'?)",
        ),
        (
            BASE + "train:\n  loss: categorical_crosentropy\n",
            "train.loss: unknown value 'categorical_crosentropy' (did you mean "
            "'categorical_crossentropy'?)",
        ),
        (
            "data:\n  dataset: mnst\n" + BASE.split("\n", 2)[2],
            "x.yaml:2:12: data.dataset: unknown value 'mnst' (did you mean 'mnist'?)",
        ),
        (
            "data:\n  dataset: mnist\n  dataset: fashion_mnist\n",
            "x.yaml:3:3: duplicate key 'dataset' in data",
        ),
        (
            "data:\n  validation: 2\n  dataset: mnist\n" + BASE.split("\n", 2)[2],
            "x.yaml:2:15: data.validation: must be `test` or a fraction",
        ),
        ("data: {}\n" + BASE.split("\n", 2)[2], "data: give exactly one of `dataset:`"),
        (
            BASE.replace("  layers: [Flatten]\n", ""),
            "x.yaml:4:3: model.layers: required but missing",
        ),
        (
            BASE.replace("[28, 28, 1]", "[28, 28]"),
            "model.input_shape: List should have at least 3 items",
        ),
        (
            BASE.replace("[Flatten]", "[{units: 3}]"),
            "x.yaml:5:12: model.layers[0]: needs a `type:`",
        ),
        ("- 1\n- 2\n", "x.yaml: expected a mapping with data:, model: and train:"),
        (
            "data: !!python/object/apply:os.system ['echo hi']\n",
            "x.yaml:1:7: the tag tag:yaml.org,2002:python/object/apply:os.system is not allowed",
        ),
        (BASE + "name: 'a/b'\n", "name: String should match pattern"),
    ],
    ids=[
        "syntax",
        "unknown-top-key",
        "wrong-type",
        "negative",
        "near-miss-key",
        "unknown-loss",
        "unknown-dataset",
        "duplicate-key",
        "bad-validation",
        "no-source",
        "missing",
        "short-shape",
        "layer-without-type",
        "not-a-mapping",
        "python-tag",
        "bad-name",
    ],
)
def test_bad_configs_name_file_line_and_place(write, text, expected):
    assert expected in error_of(write, text)


def test_unknown_key_lists_the_valid_ones(write):
    message = error_of(write, BASE + "train:\n  epoch: 3\n")
    assert "did you mean 'epochs'?" in message
    assert "hint: valid keys here: epochs, batch_size" in message


def test_missing_file_is_a_config_error():
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(Path("nope.yaml"))


def test_billion_laughs_is_refused_quickly(write):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    assert "expands to more than" in error_of(write, "\n".join(lines) + "\n")


def test_recursive_alias_is_refused(write):
    assert "nested more than" in error_of(write, "a: &x [*x]\n")


def test_huge_file_is_refused(write):
    assert "too large for a config" in error_of(write, "# " + "x" * 1_100_000 + "\n")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs", "--set train.epochs: expected KEY=VALUE"),
        (
            "train.epochs=ten",
            "--set train.epochs=ten: train.epochs: Input should be a valid integer",
        ),
        ("model.layers.7.filters=3", "model.layers[7]: no such list item (the list has 1)"),
        (
            "train.epochz=3",
            "--set train.epochz=3: train.epochz: unknown key (did you mean 'epochs'?)",
        ),
        ("data.dataset.x=1", "data.dataset is a single value, not a section"),
    ],
)
def test_bad_overrides_name_the_override(write, override, expected):
    assert expected in error_of(write, BASE, [override])


def test_override_values_are_yaml_typed(write):
    config = load_config(
        write("x.yaml", BASE),
        ["train.metrics=[accuracy, top_k_categorical_accuracy]", "data.normalize=false"],
    )
    assert config.train.metrics == ["accuracy", "top_k_categorical_accuracy"]
    assert config.data.normalize is False


def test_config_is_frozen(write):
    config = load_config(write("x.yaml", BASE))
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    assert isinstance(config, Config)


def test_parse_yaml_keeps_marks():
    source = Source("f.yaml")
    assert parse_yaml("a:\n  b: [1, 2]\n", source) == {"a": {"b": [1, 2]}}
    assert source.marks[("a", "b", 1)] == (2, 10)


def test_monitor_must_be_logged(write):
    path = write("x.yaml", SMALL + "  checkpoint:\n    monitor: val_acuracy\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        "x.yaml:22:14: train.checkpoint.monitor: 'val_acuracy' is not logged (did you mean "
        "'val_accuracy'?)" in info.value.format_message()
    )


def test_a_folder_is_not_a_config(tmp_path):
    (tmp_path / "configs").mkdir()
    with pytest.raises(ConfigError, match="configs: is a folder, not a config file"):
        load_config(Path("configs"))


@pytest.mark.parametrize(
    "path, value, read",
    [
        ("train.epochs", 3, lambda c: c.train.epochs),
        ("train.optimizer.learning_rate", 0.01, lambda c: c.train.optimizer.args["learning_rate"]),
        ("model.layers.0.filters", 64, lambda c: c.model.layers[0].args["filters"]),
        ("model.layers[0].filters", 16, lambda c: c.model.layers[0].args["filters"]),
        ("model.layers.2.type", "GlobalAveragePooling2D", lambda c: c.model.layers[2].type),
        ("data.validation", 0.1, lambda c: c.data.validation),
    ],
    ids=["scalar", "bare-optimizer", "list-item", "bracket-index", "bare-layer", "data"],
)
def test_set_and_tune_take_the_same_paths(path, value, read):
    """`--set` and a `tune:` parameter go through one setter: what one takes, the other does."""
    from cnnctl.tune.space import trial_config

    mnist = REPO / "configs" / "mnist.yaml"
    by_set = load_config(mnist, (f"{path}={value}",))
    by_tune = trial_config(load_config(mnist), {path: value}, "trial-000")
    assert read(by_set) == read(by_tune) == value


CONFIG = """\
data:
  dataset: mnist
  limit: 500
model:
  input_shape: [28, 28, 1]
  layers:
    - type: Conv2D
      filters: 8
      kernel_size: 3
    - Flatten
    - {type: Dense, units: 10, activation: softmax}
train:
  epochs: 1
  batch_size: 32
"""


def broken(line: int, text: str) -> str:
    """CONFIG with its line `line` (from 1) replaced by `text`."""
    lines = CONFIG.splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected", "hint"),
    [
        (
            broken(3, "    limit: 500"),
            "x.yaml:3:5: invalid YAML: line 3 is indented more than `dataset:` on line 2, "
            "which already has a value",
            "indent it 2 spaces, like `dataset:` on line 2",
        ),
        (
            broken(14, "    batch_size: 32"),
            "x.yaml:14:5: invalid YAML: line 14 is indented more than `epochs:` on line 13",
            "indent it 2 spaces",
        ),
        (
            broken(3, " limit: 500"),
            "x.yaml:3:2: invalid YAML: line 3 is indented 1 space, between `dataset:` on line 2 "
            "(2) and `data:` on line 1 (0): it lines up with no line above it",
            "indent it 2 spaces (like line 2) or 0 spaces (like line 1)",
        ),
        (
            broken(9, "     kernel_size: 3"),
            "x.yaml:9:6: invalid YAML: line 9 is indented 5 spaces, between `filters:` on line 8 "
            "(6) and the `-` on line 7 (4)",
            "indent it 6 spaces (like line 8) or 4 spaces (like line 7)",
        ),
        (
            broken(9, "    kernel_size: 3"),
            "x.yaml:9:5: invalid YAML: line 9 lines up with the `-` of the list item on line 7, "
            "not with its keys",
            "indent it 6 spaces to belong to that item, or start a new item with `- `",
        ),
        (
            broken(10, "   - Flatten"),
            "x.yaml:10:4: invalid YAML: line 10 is indented 3 spaces, between the `-` on line 7 "
            "(4) and `layers:` on line 6 (2)",
            "indent it 4 spaces (like line 7) or 2 spaces (like line 6)",
        ),
        (
            broken(9, "        kernel_size: 3"),
            "x.yaml:9:9: invalid YAML: line 9 is indented more than `filters:` on line 8",
            "indent it 6 spaces, like `filters:` on line 8",
        ),
        (
            broken(12, " train:"),
            "x.yaml:12:2: invalid YAML: line 12 is indented 1 space, between",
            "or 0 spaces",
        ),
        (
            broken(2, "\tdataset: mnist"),
            "x.yaml:2:1: invalid YAML: line 2 is indented with a tab; YAML indents with spaces",
            "replace the tab with spaces",
        ),
        (
            broken(2, "  dataset mnist"),
            "x.yaml:2:3: invalid YAML: line 2 has no colon: 'dataset mnist' is not `key: value`",
            "write a colon and a space after the key",
        ),
        (
            broken(5, "  input_shape: [28, 28, 1"),
            "x.yaml:5:16: invalid YAML: the `[` on line 5 is not closed",
            "close it with `]`",
        ),
        (
            broken(10, "      - Flatten"),
            "x.yaml:10:7: invalid YAML: line 10's `-` lines up with `kernel_size:` on line 9, "
            "not with the list items above it",
            "indent it 4 spaces, like the `-` on line 7",
        ),
        (
            broken(1, "  data:"),
            "x.yaml:1:3: invalid YAML: line 1 is indented 2 spaces, more than the lines after it",
            "start the top-level keys at the beginning of their lines",
        ),
        (
            broken(5, "  input_shape: [28, 28, 1]]"),
            "x.yaml:5:27: invalid YAML: line 5 goes on after its value: `]` where the line "
            "should end",
            "remove it, or put the whole value in quotes",
        ),
    ],
    ids=[
        "key-deeper-than-a-value",
        "last-key-deeper",
        "key-between-levels",
        "item-key-between-levels",
        "item-key-at-the-dash",
        "item-between-levels",
        "item-key-deeper",
        "section-indented",
        "tab",
        "missing-colon",
        "unclosed-bracket",
        "item-at-a-key",
        "first-line-indented",
        "junk-after-value",
    ],
)
def test_yaml_mistakes_in_words_at_their_line_with_a_caret(write, text, expected, hint):
    with pytest.raises(ConfigError) as caught:
        load_config(write("x.yaml", text))
    lines = caught.value.format_message().splitlines()
    assert lines[0].startswith(expected), lines[0]
    number, column = (int(n) for n in expected.split(":")[1:3])
    source = text.splitlines()[number - 1].replace("\t", "\\t")
    assert lines[1] == f"  {number} | {source}"
    assert lines[2] == f"  {' ' * len(str(number))} | {' ' * (column - 1)}^"
    assert lines[3].startswith("  hint: ") and hint in lines[3]
    assert "<block" not in lines[0] and "expected" not in lines[0]


@pytest.mark.parametrize(
    "data, shape",
    [
        ("  dataset: fashion_mnist\n", [28, 28, 1]),
        ("  dataset: cifar10\n", [32, 32, 3]),
        ("  path: photos\n  image_size: [64, 48]\n  color_mode: rgb\n", [64, 48, 3]),
    ],
    ids=["mnist-like", "cifar", "folder"],
)
def test_input_shape_is_inferred_where_the_data_fixes_it(write, data, shape):
    from cnnctl.config import inferred

    config = load_config(write("x.yaml", "data:\n" + data + "model:\n  layers: [Flatten]\n"))
    assert config.model.input_shape == shape
    assert inferred(config, ("model", "input_shape")).startswith("inferred from data.")
    assert "input_shape: [" in dump_config(config)  # the saved config repeats the run exactly


def test_input_shape_is_still_needed_where_only_the_files_tell(write):
    with pytest.raises(ConfigError, match="model.input_shape"):
        load_config(write("x.yaml", "data:\n  path: photos\nmodel:\n  layers: [Flatten]\n"))
