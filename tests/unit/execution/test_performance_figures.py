"""One source for performance figures: ``batchnlp/execution/performance.json`` is what the estimate plans
with, and the tables of docs/performance.md say the same (a figure measured again and changed in
one place only fails here)."""

from __future__ import annotations

import pytest

from batchnlp.execution.estimate import default_throughput
from batchnlp.execution.performance import Figure, figures, measured
from tests.support import REPO

PAGE = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")


def table_after(text: str) -> list[dict[str, str]]:
    """The rows (header → cell) of the first markdown table after ``text`` in docs/performance.md."""
    assert text in PAGE, f"docs/performance.md no longer holds {text!r}"
    lines = PAGE[PAGE.index(text) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    header, _, *rows = table
    return [dict(zip(header, row, strict=True)) for row in rows]


def number(cell: str) -> float:
    return float(cell.replace(",", "").replace("*", "").removesuffix(" s"))


@pytest.mark.parametrize("figure", figures(), ids=lambda f: f"{f.device}-{f.precision}-{'+'.join(f.cpu_flags)}")
def test_each_figure_is_the_one_its_readme_table_shows(figure: Figure) -> None:
    rows = [row for row in table_after(figure.readme_table) if figure.readme_row in row.values()]
    assert len(rows) == 1, f"no row {figure.readme_row!r} in the table after {figure.readme_table!r}"
    (row,) = rows
    steady = next(cell for header, cell in row.items() if header in ("tokens/s after it", "steady tokens/s"))
    assert number(steady) == figure.tokens_per_second
    assert number(row["first row s"]) == figure.first_row_s


def test_the_plan_figures_table_lists_every_figure_as_the_estimate_uses_it() -> None:
    shown = {
        (row["device, precision"], row["backend"], row["CPU flags needed"]): (
            row["tokens/s"],
            row["start-up (first row)"],
        )
        for row in table_after("The default throughputs of `batchnlp plan`")
    }
    expected = {
        (f"{f.device}, {f.precision}", f.backend, " ".join(f.cpu_flags)): (f"{f.rate:,.0f}", f"{f.first_row_s} s")
        for f in figures()
    }
    assert shown == expected


def test_a_cpu_is_planned_with_the_figures_of_a_machine_like_it() -> None:
    bf16_cpu = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "fma"})
    assert measured("cpu", "bf16", bf16_cpu).first_row_s == 4.9
    emulated = measured("cpu", "bf16", frozenset({"avx2", "fma"}))
    assert emulated.cpu_flags == ("avx2",) and emulated.rate < measured("cpu", "fp32", frozenset({"avx2"})).rate
    assert measured("cpu", "fp32", frozenset()).cpu_flags == ("avx2",), "an unknown CPU: the plainest machine's"
    assert measured("cuda", "int8") is None


def test_a_backend_is_planned_with_its_own_figure_where_one_was_measured() -> None:
    bf16_cpu = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    ort, torch = (measured("cpu", "fp32", bf16_cpu, backend) for backend in ("onnxruntime", "torch"))
    assert (ort.backend, torch.backend) == ("onnxruntime", "torch") and ort.rate > torch.rate
    assert measured("cpu", "fp32", frozenset({"avx2"}), "onnxruntime").backend == "torch", "never measured there"


def test_the_estimate_takes_its_default_from_the_figures() -> None:
    figure = measured("cpu", "int8")
    rate, startup, source = default_throughput("cpu", "int8", 3, 0)
    assert (rate, startup) == (figure.rate * 3, figure.first_row_s) and figure.machine in source
    with pytest.raises(Exception, match="no measured throughput for cuda int8"):
        default_throughput("cuda", "int8", 1, 0)
