"""The one place the benchmark scripts write their results: a marked section of
docs/benchmarks.md, ``<!-- BEGIN name -->`` to ``<!-- END name -->``, replaced in place (or
appended at the end the first time). The rest of the file is kept as it is.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name: str, text: str, docs: Path = BENCHMARKS) -> Path:
    begin_marker, end_marker = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    content = docs.read_text()
    block = f"{begin_marker}\n{text}{end_marker}\n"
    if begin_marker in content and end_marker in content:
        begin = content.index(begin_marker)
        end = content.index(end_marker) + len(end_marker)
        if content[end : end + 1] == "\n":
            end += 1
        content = content[:begin] + block + content[end:]
    else:
        content = content.rstrip("\n") + "\n\n" + block
    docs.write_text(content)
    return docs
