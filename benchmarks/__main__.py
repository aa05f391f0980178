"""``python -m benchmarks``: the benchmarks, one line each (the first line of each module's
docstring, read without importing torch)."""
import ast
from pathlib import Path

HERE = Path(__file__).parent
NOT_BENCHMARKS = {"__init__", "__main__", "harness"}


def benchmarks() -> dict[str, str]:
    """name -> first docstring line of every benchmark module."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem not in NOT_BENCHMARKS:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            out[path.stem] = doc.splitlines()[0] if doc else ""
    return out


if __name__ == "__main__":
    print("python -m benchmarks.NAME [--quick] [--help]; NAME one of:")
    for name, line in benchmarks().items():
        print(f"  {name:<16}{line}")
