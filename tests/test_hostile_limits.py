"""Limits and temporary files (issue 25, 13-14): one parser for --limit and CNNCTL_LIMITS,
bounds on every value; each cnnctl process keeps its temporary files in a folder of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main

from conftest import REPO


@pytest.mark.parametrize(
    "limits, env, message",
    [
        (["pixels=1e400"], None, "--limit pixels=1e400: the value of a limit is a whole number"),
        (["h5_seconds=1e300"], None, "--limit h5_seconds=1e300: the value of a limit"),
        (["bytes=-5"], None, "--limit bytes=-5: the value of a limit is a whole number from 1"),
        (["pixels=" + "9" * 5000], None, "the value of a limit is a whole number"),
        ([], "pixles=100", "CNNCTL_LIMITS: pixles=100: unknown limit (did you mean 'pixels'?)"),
        ([], "pixels=1e400", "CNNCTL_LIMITS: pixels=1e400: the value of a limit"),
        (["pixles=1"], None, "--limit pixles=1: unknown limit"),
    ],
    ids=["inf", "huge-seconds", "negative", "5000-digits", "env-typo", "env-inf", "flag-typo"],
)
def test_limits_from_flag_and_environment_follow_one_set_of_rules(
    runner, monkeypatch, limits, env, message
):
    if env is not None:
        monkeypatch.setenv("CNNCTL_LIMITS", env)
    args = [part for item in limits for part in ("--limit", item)]
    result = runner.invoke(main, [*args, "runs"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "internal error" not in result.stderr


def test_a_raised_limit_in_the_environment_is_read(monkeypatch):
    from cnnctl.limits import limit

    monkeypatch.setenv("CNNCTL_LIMITS", "pixels=2e8, files=5")
    assert limit("pixels") == 200_000_000 and limit("files") == 5 and limit("bytes") == 4 * 2**30


def _child_env(tmp) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("CNNCTL_TMP_OWNER", None)
    env.pop("CNNCTL_LIMITS", None)
    return env


def test_a_command_leaves_nothing_in_tmpdir(tmp_path):
    """onnxruntime writes a .ses file when imported, TensorFlow AutoGraph modules: all go."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Softmax", ["f"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "cnnctl.cli", "predict", "x.png", "--model", "m.onnx", "--json"],
        cwd=tmp_path,
        env=_child_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp.iterdir()) == []


def test_the_private_temporary_folder_goes_on_sigterm(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = (
        "import sys, time; from cnnctl.startup import private_tmp\n"
        "folder = private_tmp(); open(folder + '/x', 'w').write('x')\n"
        # printed inside the try: the signal may come the instant the line is read
        "try:\n    print(folder, flush=True)\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    sys.exit(130)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=_child_env(tmp), stdout=subprocess.PIPE, text=True
    )
    folder = child.stdout.readline().strip()
    assert folder.startswith(str(tmp)) and os.path.isdir(folder)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 130
    time.sleep(0.1)
    assert list(tmp.iterdir()) == []
