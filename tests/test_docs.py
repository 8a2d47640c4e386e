"""Every `lth …` command the README and the docs/ pages show is a command lth accepts: each is parsed by the real
parser (a flag renamed or removed fails here), and the README's two commands are the ones CI and users run."""
import re
import shlex
from pathlib import Path

import pytest

from lth.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks marked bash or sh, or not marked."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(text: str) -> list[list[str]]:
    """`lth` command lines inside the shell code blocks, continuation lines joined, comments dropped."""
    found = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            if not re.match(r"\s*(\w+=\S+\s+)*(\.venv/bin/)?lth(\s|$)", line):
                continue  # output, a listing or another program
            words = shlex.split(line, comments=True)
            while words and "=" in words[0]:  # VAR=value lth ...
                words = words[1:]
            ends = [i for i, w in enumerate(words) if w in ("|", ">", ">>", "&&", ";")]
            words = words[:ends[0]] if ends else words  # the lth command of a pipeline
            if words and words[0] in ("lth", ".venv/bin/lth"):
                found.append(words)
    return found


def test_every_documented_command_parses():
    parser, checked = build_parser(), 0
    for page in PAGES:
        for words in commands(page.read_text()):
            line = " ".join(words)
            if "$" in line or "..." in line or "…" in line:  # a shell variable or an elided part: not one command
                continue
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{page.name}: `{line}` is not a command lth accepts")
            checked += 1
    assert checked >= 30, checked


def test_the_readme_keeps_its_two_commands_and_links_pages_that_exist():
    text = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/lth find" in text and "bash .ci/run" in text
    links = re.findall(r"\]\((docs/[^)]+\.md)\)", text)
    assert len(links) >= 9 and all((REPO / link).is_file() for link in links)
    assert len(text.splitlines()) < 150, "the README stays a short page: details go to docs/"


@pytest.mark.slow
@pytest.mark.subprocess
def test_installing_lth_keeps_the_torch_a_user_has(tmp_path):
    """A fresh venv with another torch (a stand-in 2.9.0 package: the real ones are GBs): pip resolving lth's
    requirements keeps it and would install no torch."""
    import subprocess
    import sys

    fake = tmp_path / "faketorch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text('__version__ = "2.9.0"\n')
    (fake / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                         'build-backend = "setuptools.build_meta"\n'
                                         '[project]\nname = "torch"\nversion = "2.9.0"\n')
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", str(fake)], check=True, capture_output=True)
    out = subprocess.run([*pip, "install", "--dry-run", str(REPO)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    kept = [line for line in out.stdout.splitlines() if line.startswith("Requirement already satisfied: torch")]
    would = next((line for line in out.stdout.splitlines() if line.startswith("Would install")), "")
    assert kept and "(2.9.0)" in kept[0] and "torch-" not in would, out.stdout[-2000:]
