"""``python -m benchmarks``: the benchmarks, one line each (the first paragraph of each module's
docstring, read without importing torch)."""
import ast
import textwrap
from pathlib import Path

HERE = Path(__file__).parent
NOT_BENCHMARKS = {"__init__", "__main__", "harness"}


def benchmarks() -> dict[str, str]:
    """name -> first docstring line of every benchmark module."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem not in NOT_BENCHMARKS:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, on one line
            out[path.stem] = textwrap.shorten(first, 100, placeholder=" ...")
    return out


if __name__ == "__main__":
    print("python -m benchmarks.NAME [--quick] [--help]; NAME one of:")
    for name, line in benchmarks().items():
        print(f"  {name:<16}{line}")
