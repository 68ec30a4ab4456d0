"""The docs say what the code has: README.md, docs/*.md and infra/README.md are checked against the
repository and the real CLI, so a renamed module, a dropped flag or a moved heading fails here
rather than in a reader's terminal.

- every relative link resolves: the file or folder exists, and a ``#anchor`` names a heading of
  the page it points into (GitHub's slug rules);
- every ``batchnlp …`` command line in a fenced code block names a real command path, and every
  ``--flag`` it uses is an option of that command (``submit``'s arguments after a bare ``--`` are
  ``batchnlp run``'s), read from click's own objects; every command is shown at least once;
- docs/cli.md tables every option of every command;
- every ``batchnlp/…`` path and ``batchnlp.x.y`` module named anywhere in the docs exists;
- docs/architecture.md draws the layers tests/unit/test_architecture.py enforces, top to bottom, and
  lists every module of the package.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from batchnlp.cli import main
from tests.support import REPO

ROOT = REPO
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]

# Dotted names in the docs that are data, not Python: a Parquet field's metadata key and the
# property a Delta/Iceberg commit carries.
NOT_MODULES = {"batchnlp.labels", "batchnlp.run_id"}

# Code blocks in these languages hold no shell commands.
NOT_SHELL = {"python", "json", "yaml", "yml", "toml", "text"}


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language word and its lines, numbered as in the page."""

    page: Path
    language: str
    lines: list[tuple[int, str]]


def where(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def prose_and_blocks(page: Path) -> tuple[list[tuple[int, str]], list[Block]]:
    """The page's lines outside fenced code blocks, and its fenced code blocks."""
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        fence = line.lstrip().startswith("```")
        if current is None and fence:
            current = Block(page, line.strip().strip("`").strip().lower(), [])
        elif current is not None and fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append((number, line))
        else:
            prose.append((number, line))
    assert current is None, f"{page.relative_to(ROOT)}: a code block is never closed"
    return prose, blocks


# --- links -----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (no code ticks, links as their text),
    lower-cased, punctuation other than ``-`` and ``_`` dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in ``page``; a repeated heading gets ``-1``, ``-2`` as on GitHub."""
    prose, _ = prose_and_blocks(page)
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    """The targets of the page's markdown links outside code (inline or fenced)."""
    prose, _ = prose_and_blocks(page)
    # Inline code may run over a line break: blank it out over the whole text, keeping the lines.
    text = re.sub(r"`[^`]*`", lambda code: "\n" * code.group().count("\n"), "\n".join(line for _, line in prose))
    for (number, _), line in zip(prose, text.split("\n"), strict=True):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            yield number, target


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target``, linked from ``page``, does not resolve; None when it does or is not local."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):
        return None  # http(s), mailto: not this repository's
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{path} does not exist"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{file.relative_to(ROOT)} has no heading #{anchor}"
    return None


def test_every_relative_link_resolves():
    broken = [
        f"{where(page, number)}: ({target}): {why}"
        for page in PAGES
        for number, target in links(page)
        if (why := broken_link(page, target))
    ]
    assert not broken, "\n".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_heading():
    readme = ROOT / "README.md"
    assert broken_link(readme, "docs/cli.md") is None
    assert broken_link(readme, "docs/no-such-page.md") == "docs/no-such-page.md does not exist"
    assert broken_link(readme, "docs/cli.md#no-such-heading") == "docs/cli.md has no heading #no-such-heading"
    assert broken_link(readme, "https://example.com/nowhere") is None
    assert slug("Lake tables: Delta Lake and Iceberg") == "lake-tables-delta-lake-and-iceberg"
    assert slug("Progress, logs and `inspect`") == "progress-logs-and-inspect"


# --- commands --------------------------------------------------------------------------------

SEPARATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")"}
PROMPTS = {"$", ">"}
SHELL_WORDS = {"do", "then", "else", "time", "exec", "env", "sudo"}


def shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """The command lines of a shell block, continuations joined: every line, or in a console
    transcript (lines starting ``$ ``) only the prompted lines and their ``> `` continuations."""
    if block.language in NOT_SHELL:
        return
    transcript = any(line.startswith("$ ") for _, line in block.lines)
    start, joined, continuing = 0, "", False
    for number, line in block.lines:
        if transcript and not continuing and not line.startswith(("$ ", "> ")):
            continue
        if not continuing:
            start, joined = number, ""
        text = line[2:] if transcript and line.startswith(("$ ", "> ")) else line
        continuing = text.rstrip().endswith("\\")
        joined += " " + text.rstrip().removesuffix("\\")
        if not continuing:
            yield start, joined


def invocations(line: str) -> Iterator[list[str]]:
    """The arguments of each ``batchnlp`` command in a shell line (comments dropped)."""
    if not re.search(r"(^|\s)batchnlp(\s|$)", line):
        return  # no command of ours (and perhaps not shell either: a tree, a usage line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    at_start, i = True, 0
    while i < len(tokens):
        token = tokens[i]
        if token in SEPARATORS:
            at_start = True
        elif at_start and (token in PROMPTS or token in SHELL_WORDS or re.match(r"\w+=", token)):
            pass  # a prompt, a shell keyword or an environment assignment before the command
        elif at_start and token == "batchnlp":
            end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in SEPARATORS), len(tokens))
            yield tokens[i + 1 : end]
            i = end
            continue
        else:
            at_start = False
        i += 1


def options(context: click.Context) -> set[str]:
    """Every flag the context's command accepts, its help option (as its group names it) included."""
    command = context.command
    names = {opt for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}
    return names | set(command.get_help_option_names(context))


def context_of(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context click makes for ``command`` (its own settings, its parent's help option names)."""
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def command_errors(args: list[str]) -> list[str]:
    """What is wrong with ``batchnlp ARGS``: an unknown command, or flags its command lacks."""
    top = context = context_of(main, "batchnlp")
    rest = list(args)
    while isinstance(context.command, click.Group) and rest and not rest[0].startswith("-"):
        sub = context.command.get_command(context, rest[0])
        if sub is None:
            return [f"no command {context.command_path} {rest[0]}"]
        context = context_of(sub, rest.pop(0), context)
    errors = []
    checked, name = context, context.command_path
    for token in rest:
        if token == "--":
            if context.info_name != "submit":
                break  # what follows is positional
            checked = context_of(main.get_command(top, "run"), "run", top)
            name = "batchnlp run (after submit --)"
        elif re.match(r"--?[A-Za-z]", token) and token.split("=")[0] not in options(checked):
            errors.append(f"{name} has no option {token.split('=')[0]}")
    return errors


def shown_commands() -> Iterator[tuple[str, list[str]]]:
    """Every ``batchnlp`` command in the docs' code blocks, with where it is."""
    for page in PAGES:
        for block in prose_and_blocks(page)[1]:
            for number, line in shell_lines(block):
                for args in invocations(line):
                    yield where(page, number), args


def test_every_command_shown_parses_against_the_cli():
    shown = list(shown_commands())
    assert len(shown) > 50, "the docs' commands are no longer found"
    wrong = [f"{place}: {error}" for place, args in shown for error in command_errors(args)]
    assert not wrong, "\n".join(wrong)


def leaf_paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if not isinstance(command, click.Group):
        yield path
        return
    context = click.Context(command)
    for name in command.list_commands(context):
        yield from leaf_paths(command.get_command(context, name), (*path, name))


def test_every_command_of_the_cli_is_shown_somewhere():
    shown = {tuple(args[: len(path)]) for _, args in shown_commands() for path in leaf_paths(main)}
    missing = [" ".join(path) for path in leaf_paths(main) if path not in shown]
    assert not missing, f"commands no code block in the docs shows: {missing}"


def test_the_command_check_finds_a_made_up_command_or_flag():
    lines = list(
        shell_lines(
            Block(
                ROOT,
                "console",
                [
                    (1, "$ batchnlp run in/ out/ --task sentiment \\"),
                    (2, ">     --no-such-flag 3   # a comment --not-a-flag"),
                    (3, "wrote 3 rows; batchnlp commit --made-up"),
                    (4, "$ X=1 batchnlp models pul s3://m/ && batchnlp submit --queue q -- --workers 2 --nodez 4"),
                ],
            )
        )
    )
    assert [number for number, _ in lines] == [1, 4], "output lines are not commands"
    found = [args for _, line in lines for args in invocations(line)]
    assert found[0] == ["run", "in/", "out/", "--task", "sentiment", "--no-such-flag", "3"]
    assert [command_errors(args) for args in found] == [
        ["batchnlp run has no option --no-such-flag"],
        ["no command batchnlp models pul"],
        ["batchnlp run (after submit --) has no option --nodez"],
    ]
    assert command_errors(["models", "pull", "a", "b", "--overwrite", "-h"]) == []
    assert command_errors(["--version"]) == []


# --- module names ----------------------------------------------------------------------------

PATH_NAME = re.compile(r"(?<![\w./-])batchnlp/[\w/.]*\w(?:\.\w+|/)")
DOTTED_NAME = re.compile(r"(?<![\w./-])batchnlp(?:\.\w+)+")


def names_a_module(name: str) -> bool:
    """Whether ``name`` is a batchnlp module (found, not imported: ``batchnlp.__main__`` runs the
    CLI), or an attribute of one (``batchnlp.run``)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.util.find_spec(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue  # a parent is no package
        if found is None:
            continue
        owner = importlib.import_module(".".join(parts[:cut])) if cut < len(parts) else None
        for attribute in parts[cut:]:
            if not hasattr(owner, attribute):
                return False
            owner = getattr(owner, attribute)
        return True
    return False


def test_every_module_the_docs_name_exists():
    text = {page: page.read_text(encoding="utf-8") for page in PAGES}
    paths = {(page, name) for page, body in text.items() for name in PATH_NAME.findall(body)}
    dotted = {(page, name) for page, body in text.items() for name in DOTTED_NAME.findall(body)}
    assert len(paths) > 10 and len(dotted) > 10, "the docs' module names are no longer found"
    missing = sorted(f"{page.relative_to(ROOT)}: {name}" for page, name in paths if not (ROOT / name).exists())
    missing += sorted(
        f"{page.relative_to(ROOT)}: {name}"
        for page, name in dotted
        if name not in NOT_MODULES and not names_a_module(name)
    )
    assert not missing, "named in the docs but not in the package:\n" + "\n".join(missing)


def test_the_module_check_finds_a_stale_name():
    assert PATH_NAME.findall("see `batchnlp/submit.py` and batchnlp/io/formats/ and batchnlp-runs/") == [
        "batchnlp/submit.py",
        "batchnlp/io/formats/",
    ]
    assert not (ROOT / "batchnlp/submit.py").exists()
    assert names_a_module("batchnlp.execution.runner") and names_a_module("batchnlp.run")
    assert names_a_module("batchnlp.testing.build_classifier")
    assert not names_a_module("batchnlp.sharded") and not names_a_module("batchnlp.execution.no_such_thing")


# --- the architecture drawing ----------------------------------------------------------------


def enforced_layers() -> list[list[str]]:
    """``LAYERS`` of tests/unit/test_architecture.py (wherever the tests' folders put it), read
    without importing it."""
    (source,) = ROOT.joinpath("tests").rglob("test_architecture.py")
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in targets):
                return ast.literal_eval(node.value)
    raise AssertionError(f"{source} defines no LAYERS")


def drawn_layers(page: Path) -> list[list[str]]:
    """The layers docs/architecture.md draws: the block after its "Layers, top to bottom" paragraph,
    one layer a line, units separated by spaces (a unit's ``/`` and words after ``#`` aside)."""
    _, blocks = prose_and_blocks(page)
    text = page.read_text(encoding="utf-8").splitlines()
    for block in blocks:
        fence = block.lines[0][0] - 2 if block.lines else 0  # 0-based: the opening fence's line
        above = "\n".join(text[:fence]).rstrip().split("\n\n")[-1]  # the paragraph just above
        if "layers, top to bottom" in above.lower():
            return [
                [unit.rstrip("/") for unit in line.split("#")[0].split()]
                for _, line in block.lines
                if line.split("#")[0].strip() and not set(line.split("#")[0].strip()) <= set("↓│ ")
            ]
    raise AssertionError(f"{page.relative_to(ROOT)} has no block after a 'Layers, top to bottom' paragraph")


def test_the_architecture_page_draws_the_layers_the_tests_enforce():
    assert drawn_layers(ROOT / "docs" / "architecture.md") == enforced_layers()


def test_the_architecture_page_lists_every_module():
    package = ROOT / "batchnlp"
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in package.rglob("*.py")
    }
    listed = set(re.findall(r"^\| `(batchnlp[\w.]*)` \|", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    assert listed == modules, f"unlisted: {sorted(modules - listed)}; gone: {sorted(listed - modules)}"


# A command whose section in docs/cli.md tables only the options it adds to another's.
TABLES_ONLY_ITS_OWN = {"plan": "run"}


def option_tables(page: Path) -> dict[str, set[str]]:
    """The flags in the first column of each ``## `batchnlp X` `` section's tables, by X."""
    tables: dict[str, set[str]] = {}
    section = None
    for _, line in prose_and_blocks(page)[0]:
        heading = re.match(r"## `batchnlp ([\w ]+)`", line)
        if heading:
            section = heading.group(1)
            tables[section] = set()
        elif section and line.startswith("| `-"):
            tables[section] |= set(re.findall(r"`(--?[A-Za-z][\w-]*)", line.split("|")[1]))
    return tables


def declared(name: str) -> set[str]:
    """Every flag of ``batchnlp NAME`` (of each of its subcommands, for a group), help aside."""
    top = context_of(main, "batchnlp")
    context = context_of(main.get_command(top, name), name, top)
    commands = [context.command]
    if isinstance(context.command, click.Group):
        commands = [context.command.get_command(context, sub) for sub in context.command.list_commands(context)]
    flags = {
        opt for c in commands for p in c.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)
    }
    return flags - set(context.command.get_help_option_names(context))


def test_the_cli_reference_tables_every_option_of_every_command():
    tables = option_tables(ROOT / "docs" / "cli.md")
    assert sorted(tables) == sorted(main.list_commands(context_of(main, "batchnlp"))), "a section per command"
    wrong = []
    for name, shown in tables.items():
        shown = shown - {"-h", "--help"}
        inherited = declared(TABLES_ONLY_ITS_OWN[name]) if name in TABLES_ONLY_ITS_OWN else set()
        if extra := shown - declared(name):
            wrong.append(f"batchnlp {name} has no {sorted(extra)}")
        if missing := declared(name) - shown - inherited:
            wrong.append(f"docs/cli.md does not table batchnlp {name}'s {sorted(missing)}")
    assert not wrong, "\n".join(wrong)


def test_the_docs_index_and_the_front_page_link_every_page():
    pages = {page.name for page in (ROOT / "docs").glob("*.md")} - {"README.md"}
    indexed = {target.partition("#")[0] for _, target in links(ROOT / "docs" / "README.md")}
    fronted = {target.partition("#")[0].removeprefix("docs/") for _, target in links(ROOT / "README.md")}
    assert pages <= indexed, f"docs/README.md does not link {sorted(pages - indexed)}"
    assert pages <= fronted, f"README.md does not link {sorted(pages - fronted)}"
