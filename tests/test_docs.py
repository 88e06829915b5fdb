"""The documentation stays true to the code: protocol citations resolve, snippets run, options are listed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_HEADING = re.compile(r"^(\d+(?:\.\d+)?)\.? [^\n]+\n([-~])\2+$", re.MULTILINE)
_CITATION = re.compile(r"docs/protocol\.rst (§[\d.]+(?:[-/,] ?§?[\d.]+)*)")


def _sections() -> dict[str, str]:
    text = (DOCS / "protocol.rst").read_text(encoding="utf-8")
    return {m.group(1).rstrip("."): m.group(2) for m in _HEADING.finditer(text)}


def _sources() -> list[Path]:
    return [p for d in ("tinker_sync", "tests", "examples") for p in (ROOT / d).rglob("*.py")]


def test_protocol_has_sections_0_to_16_with_subsections_under_them() -> None:
    sections = _sections()
    assert [s for s, level in sections.items() if level == "-"] == [str(n) for n in range(17)]
    for number, level in sections.items():
        if level == "~":
            assert number.split(".")[0] in sections, number


def test_every_protocol_citation_in_the_code_names_an_existing_section() -> None:
    sections = _sections()
    cited: list[tuple[str, str]] = []
    for path in _sources():
        for match in _CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in re.findall(r"\d+(?:\.\d+)?", match.group(1)):
                cited.append((f"{path.relative_to(ROOT)}", number))
    assert len(cited) >= 20  # the code does cite it
    unknown = [(where, n) for where, n in cited if n not in sections]  # "§5.3/5.4": both numbers checked
    assert not unknown, unknown


def test_no_citation_of_a_document_outside_the_repository() -> None:
    outside = re.compile("PROTOCOL" + r" §|\.\./" + "shared")  # split so this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in _sources() if outside.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def _python_blocks(rst: str) -> list[str]:
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", rst)
    return [textwrap.dedent(b) for b in blocks]


def test_quick_start_script_runs_offline() -> None:
    block = _python_blocks((DOCS / "quickstart.rst").read_text(encoding="utf-8"))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env["TINKER_SYNC_TOKENIZER_BACKEND"] = "tokenizers"  # as without the [hf] extra (CI); no transformers import
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(line.split()[1]) for line in out.stdout.splitlines()[:10]]
    assert losses[-1] < losses[0] / 10, out.stdout
    assert "', world.'" in out.stdout.splitlines()[-1], out.stdout


def test_local_server_page_lists_every_command_line_option() -> None:
    from tinker_sync.local._cli import build_parser

    page = (DOCS / "local_server.rst").read_text(encoding="utf-8")
    options = sorted(set(re.findall(r"--[a-z][a-z-]*", build_parser().format_help())))
    missing = [opt for opt in options if opt != "--help" and f"``{opt}" not in page]
    assert options and not missing, missing


def test_every_example_is_described_and_tested() -> None:
    described = (DOCS / "examples.rst").read_text(encoding="utf-8")
    tested = (ROOT / "tests" / "test_examples.py").read_text(encoding="utf-8")
    for script in sorted(p.name for p in (ROOT / "examples").glob("[!_]*.py")):
        assert f"``{script}``" in described, script
        assert f'"{script}"' in tested, script


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    line = readme.split("Install and run the tests::", 1)[1].strip().splitlines()[0].strip()
    install, _, command = line.partition(" && ")
    assert install.startswith("pip install -e") and command.startswith("python -m pytest"), line
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1] == command.replace("python ", "python3 ", 1)
    assert "pytest-xdist" in (ROOT / "setup.cfg").read_text(encoding="utf-8")  # -n needs it in the test extra
    assert line in (DOCS / "quickstart.rst").read_text(encoding="utf-8")  # the docs give the same line
