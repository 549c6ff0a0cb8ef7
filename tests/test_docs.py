"""README.md and docs/: every command they give names a script that exists and options that
script takes, and every link points at a file of the repository."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_commands(page: Path) -> list[str]:
    """The commands of a page's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def script_calls(command: str) -> list[tuple[str, list[str]]]:
    """(script path, its arguments) for each `python scripts/x.py ...` or `bash scripts/x.sh`
    in a command (several may be joined by && or ;)."""
    calls = []
    for part in re.split(r"&&|;|\|", command):
        try:
            words = shlex.split(part, posix=True)
        except ValueError:  # a quote opened in one part and closed in another
            words = part.split()
        for i, word in enumerate(words):
            if word.startswith("scripts/") and word.endswith((".py", ".sh")):
                calls.append((word, words[i + 1:]))
                break
    return calls


@pytest.fixture(scope="module")
def options(load_script_module):
    """The options each Python script takes, read from its own --help."""
    known = {}

    def of(script: str) -> set[str]:
        if script not in known:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
                load_script_module(Path(script).stem).main(["--help"])
            known[script] = set(re.findall(r"--[a-z0-9][a-z0-9-]*", out.getvalue()))
        return known[script]
    return of


@pytest.fixture(scope="module")
def load_script_module():
    import importlib.util
    import sys

    def load(name):
        spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "scripts" /
                                                      f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    return load


def test_the_pages_give_commands_at_all():
    assert len([c for page in PAGES for c in bash_commands(page)]) > 20
    assert script_calls("python scripts/a.py --x 1 && bash scripts/b.sh y") == \
        [("scripts/a.py", ["--x", "1"]), ("scripts/b.sh", ["y"])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_names_a_script_that_exists_and_options_it_takes(page, options):
    problems = []
    for command in bash_commands(page):
        for script, args in script_calls(command):
            if not (ROOT / script).is_file():
                problems.append(f"{script}: no such script ({command})")
                continue
            if script.endswith(".py"):
                unknown = {a.split("=")[0] for a in args if a.startswith("--")} - \
                    options(script)
                if unknown:
                    problems.append(f"{script}: unknown {sorted(unknown)} ({command})")
    assert problems == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_points_at_a_file_of_the_repository(page):
    text = page.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links if not link.startswith(("http://", "https://"))
               and not (page.parent / link).exists()]
    assert missing == []
    assert "DESIGN" not in text.replace("docs/design.md", "")
