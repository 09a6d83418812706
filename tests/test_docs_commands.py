"""The commands in README.md and docs/*.md stay true.

Every fenced ``bash`` block is split into commands; each command that runs one of the
project's tools (``tools/*.py``, ``benchmarks/*.py``, ``python -m pose.*``, also behind
``torchrun``) is run up to and including its argument parsing, in this process, with the
arguments exactly as written: argparse's own check rejects a misspelt or renamed flag, a
missing required one or a bad value. Where the command names a config file that exists, the
config is also loaded with the command's ``--set`` overrides, so a misspelt config key fails
too. Nothing else runs: the tool is stopped as soon as its parser returns.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from conftest import tool_output_restored

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|"}


def bash_commands(text: str) -> list[list[str]]:
    """The commands of a markdown text's fenced bash blocks, each as its argv."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in list(lexer) + [";"]:
                if token in SEPARATORS:
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(token)
    return commands


def tool_invocation(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """("script", path, args) or ("module", name, args) for a command that runs one of the
    project's tools; None for anything else (pip, pytest, ...)."""
    if argv[0] == "torchrun":
        scripts = [i for i, token in enumerate(argv) if token.endswith(".py")]
        return ("script", argv[scripts[0]], argv[scripts[0] + 1:]) if scripts else None
    if argv[0] not in ("python", "python3") or len(argv) < 2:
        return None
    if argv[1] == "-m" and argv[2].startswith("pose."):
        return ("module", argv[2], argv[3:])
    if argv[1].startswith(("tools/", "benchmarks/")) and argv[1].endswith(".py"):
        return ("script", argv[1], argv[2:])
    return None


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def parse_command(kind: str, target: str, args: list[str]) -> argparse.Namespace:
    """Run a tool until its ArgumentParser has parsed ``args``; its namespace.

    A parser error fails the calling test with argparse's message."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, *a, **kw):
        raise _Parsed(real_parse_args(parser, *a, **kw))

    if kind == "module":
        path = Path(importlib.util.find_spec(target).origin)
    else:
        path = ROOT / target
        assert path.is_file(), f"{target} does not exist"
    stderr = io.StringIO()
    saved = sys.argv[:], sys.path[:]
    try:
        argparse.ArgumentParser.parse_args = parse_then_stop
        sys.argv = [target, *args]
        if kind == "script":
            sys.path.insert(0, str(path.parent))  # as `python path/x.py` would
        with tool_output_restored(), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        pytest.fail(f"{target} {shlex.join(args)}\nexits {exit_.code}: {stderr.getvalue().strip()}")
    finally:
        argparse.ArgumentParser.parse_args = real_parse_args
        sys.argv, sys.path[:] = saved
    pytest.fail(f"{target} never parsed its arguments")


def check_command(argv: list[str]) -> None:
    kind, target, args = tool_invocation(argv)
    namespace = parse_command(kind, target, args)
    config = getattr(namespace, "config", None)
    if config and (ROOT / config).is_file():
        from pose.config import load_config

        load_config(ROOT / config, getattr(namespace, "overrides", None) or [])


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for document in DOCUMENTS:
        for argv in bash_commands(document.read_text()):
            if tool_invocation(argv):
                found.append((f"{document.relative_to(ROOT)}: {shlex.join(argv)[:90]}", argv))
    return found


COMMANDS = documented_commands()


def test_the_documents_have_commands_for_every_tool():
    scripts = {tool_invocation(argv)[1] for _, argv in COMMANDS}
    tools = {f"tools/{p.name}" for p in (ROOT / "tools").glob("*.py")}
    assert tools <= scripts, f"tools no document shows: {sorted(tools - scripts)}"


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS],
                         ids=[name for name, _ in COMMANDS])
def test_documented_command_parses(argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_command(argv)


def test_a_misspelt_flag_or_config_key_fails():
    """The check itself: the README's grid command, with one flag and then one config key
    misspelt, fails and names what is wrong."""
    readme = bash_commands((ROOT / "README.md").read_text())
    grid = next(argv for argv in readme if tool_invocation(argv)
                and tool_invocation(argv)[1] == "tools/grid.py" and "--throughput" in argv)
    check_command(grid)  # as written: passes

    misspelt = [token.replace("--throughput", "--througput") for token in grid]
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --througput"):
        check_command(misspelt)

    train = next(argv for argv in readme if tool_invocation(argv)
                 and tool_invocation(argv)[1] == "tools/train.py" and "--set" in argv)
    bad_key = [token.replace("train.amp=", "train.ampp=") for token in train]
    with pytest.raises(Exception, match="train.ampp"):
        check_command(bad_key)


def test_bash_commands_reads_continuations_chains_and_comments():
    text = ("```bash\n# a comment\npip install -e . && python tools/x.py --a 1 \\\n"
            "    --b '2 3'   # trailing\n```\n```python\npython tools/not_bash.py\n```\n")
    assert bash_commands(text) == [["pip", "install", "-e", "."],
                                   ["python", "tools/x.py", "--a", "1", "--b", "2 3"]]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_between_documents_resolve(document):
    """Relative links of README.md and docs/*.md point at files that exist and, with a
    #fragment, at a heading of that file."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
            if fragment not in {_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{document.name}: broken links {broken}"
