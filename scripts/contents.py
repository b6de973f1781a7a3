"""Rewrite sage_core.__all__ from the module itself: every public top-level name, in source
order, grouped under its section's title (tests/test_module.py checks the result).
Usage: python scripts/contents.py"""
import ast
import re
import textwrap
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "sage_core.py"
source = PATH.read_text()
start, end = source.index("__all__ = [\n"), source.index("\n]\n") + 3
banners = [(m.start(), m.group(1)) for m in re.finditer(r"\n# =+\n# (\d+\. [^—\n]+?) —", source)]
line_offsets = [0]
for line in source.split("\n"):
    line_offsets.append(line_offsets[-1] + len(line) + 1)

groups: dict[str, list[str]] = {"shared helpers": []}
for node in ast.parse(source).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        names = [node.name]
    elif isinstance(node, ast.Assign):
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        names = [node.target.id]
    else:
        continue
    offset = line_offsets[node.lineno - 1]
    title = max([(b, t) for b, t in banners if b < offset], default=(0, "shared helpers"))[1]
    groups.setdefault(title, []).extend(n for n in names if not n.startswith("_"))

lines = ["__all__ = ["]
for title, names in groups.items():
    lines.append(f"    # {title.strip()}")
    lines += textwrap.wrap(", ".join(f'"{n}"' for n in names) + ",", 100,
                           initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
lines.append("]\n")
PATH.write_text(source[:start] + "\n".join(lines) + source[end:])
