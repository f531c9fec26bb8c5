"""The corpus of bad configs in tests/corpus/configs: each one's exit code and key phrase.

Each file starts with `# expect: CODE | COMMAND | PHRASE`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnctl.cli import main

CORPUS = sorted((Path(__file__).parent / "corpus" / "configs").glob("*.yaml"))


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 40


def said(stderr: str) -> list[str]:
    """The error's lines, without the quoted line of the file and its caret (`  12 |   ...`)."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"\s+\d* \| ", line)]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_config(runner, path):
    code, command, phrase = (
        part.strip()
        for part in re.match(r"# expect: (.*)", path.read_text().splitlines()[0])
        .group(1)
        .split("|", 2)
    )
    result = runner.invoke(main, [command, str(path)])
    assert result.exit_code == int(code), result.output
    assert phrase in result.stderr
    assert re.search(
        rf"^Error: {re.escape(str(path))}(:\d+:\d+)?: ", result.stderr, re.MULTILINE
    ), result.stderr
    assert "Traceback" not in result.output and len(said(result.stderr)) <= 2
    assert not Path("runs").exists() or not any(Path("runs").iterdir())
