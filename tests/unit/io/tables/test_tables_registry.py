"""The table format registry, held to what it promises: each entry's dotted paths name code with the
interface the run calls, the spec and the CLI take exactly its names, no module outside a format's
own spells a format's name to decide behaviour, and naming a format imports none of their libraries.
So adding a table format is one module and one line in ``TABLES``."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import click
import pytest
import tomllib

from batchnlp.io.tables import TABLES, load
from batchnlp.io.tables.base import TableSink
from tests.support import REPO as ROOT

PACKAGE = ROOT / "batchnlp"


@pytest.mark.parametrize("name", list(TABLES))
def test_each_entry_names_a_sink_its_extra_installs(name):
    table = TABLES[name]
    sink = load(table.sink)
    assert inspect.isclass(sink) and issubclass(sink, TableSink) and not inspect.isabstract(sink)
    assert sink.version_kind == table.version_word, "what --table-version's message calls a commit is the sink's"
    assert table.addressed_by in ("path", "name")
    if table.rewrites is not None:
        assert list(inspect.signature(load(table.rewrites)).parameters) == ["location", "after", "upto"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith(table.package) for requirement in extras[name]), table.install
    assert f"batchnlp[{name}]" in table.install


def test_the_spec_and_every_command_take_the_registry_s_names():
    from batchnlp.cli import main
    from batchnlp.io import formats
    from batchnlp.spec import INPUT_FORMATS, OUTPUT_FORMATS, TABLE_FORMATS

    assert set(TABLE_FORMATS) == set(TABLES)
    assert set(INPUT_FORMATS) == set(formats.INPUT_FORMATS) | set(TABLES)
    assert set(OUTPUT_FORMATS) == set(formats.OUTPUT_FORMATS) | set(TABLES)
    choices = {
        (command, param.name): set(param.type.choices)
        for command in ("run", "plan", "commit", "distill", "submit")
        for param in main.get_command(click.Context(main), command).params
        if param.name in ("input_format", "output_format") and isinstance(param.type, click.Choice)
    }
    assert choices[("distill", "output_format")] == set(TABLES), "distill reads a table or part files"
    assert choices[("commit", "output_format")] == set(OUTPUT_FORMATS)
    for command in ("run", "plan"):
        assert choices[(command, "input_format")] == set(INPUT_FORMATS)
        assert choices[(command, "output_format")] == set(OUTPUT_FORMATS)


def spelled_names(path: Path) -> list[str]:
    """Where ``path`` spells a table format's name or library as a whole string (as a literal that picks
    behaviour does: compared, a key, a choice); the registry's own entries aside. Messages that mention
    a format within a sentence are longer strings and not counted."""
    names = set(TABLES) | {t.package for t in TABLES.values()}
    tree = ast.parse(path.read_text())
    registry = {
        id(node)
        for statement in tree.body
        if isinstance(statement, ast.AnnAssign | ast.Assign) and "TABLES" in ast.unparse(statement).split(":")[0]
        for node in ast.walk(statement)
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in registry
    ]


def test_no_module_but_a_format_s_own_spells_its_name():
    own = {(ROOT / load(t.sink).__module__.replace(".", "/")).with_suffix(".py") for t in TABLES.values()}
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if path not in own]
    assert PACKAGE / "spec" / "__init__.py" in modules and PACKAGE / "io" / "tables" / "__init__.py" in modules
    found = [where for path in modules for where in spelled_names(path)]
    assert not found, "decide by the registry's fields (batchnlp.io.tables.TABLES) instead:\n" + "\n".join(found)


def test_naming_a_table_format_imports_no_table_library():
    """`batchnlp --help`, a table job's spec and its output object load neither deltalake nor pyiceberg."""
    script = """
import sys
from click.testing import CliRunner
from batchnlp.cli import main
from batchnlp.ledger.output import open_output
from batchnlp.spec import JobSpec
from batchnlp.io.tables import TABLES

assert CliRunner().invoke(main, ["--help"]).exit_code == 0
assert CliRunner().invoke(main, ["run", "--help"]).exit_code == 0
for name, table in TABLES.items():
    output = "lake.labels" if table.addressed_by == "name" else "out/table"
    JobSpec.from_settings({"input": "in.jsonl", "output": output, "output_format": name})
open_output(JobSpec.from_settings({"input": "in.jsonl", "output": "out/table", "output_format": "delta"}))
libraries = {table.package for table in TABLES.values()}
print(sorted(m for m in sys.modules if m.split(".")[0] in libraries))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
