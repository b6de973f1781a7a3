"""The shape of sage_core itself: its table of contents and the order of its sections."""
import ast
import re

import sage_core as sc

SOURCE = sc.ROOT.joinpath("sage_core.py").read_text()
TREE = ast.parse(SOURCE)


def top_level_names():
    names = []
    for node in TREE.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def test_all_lists_every_public_name_once():
    public = [n for n in top_level_names() if not n.startswith("_") and n != "__all__"]
    assert len(sc.__all__) == len(set(sc.__all__))
    assert set(sc.__all__) == set(public), set(sc.__all__) ^ set(public)
    assert all(hasattr(sc, name) for name in sc.__all__)


def test_all_follows_the_sections_in_order():
    groups = re.findall(r"# (\d+)\. ", SOURCE[SOURCE.index("__all__ = ["):SOURCE.index("\n]\n")])
    banners = re.findall(r"\n# =+\n# (\d+)\. ", SOURCE)
    assert groups == banners == [str(i) for i in range(1, 14)]


def test_a_section_uses_only_the_sections_above_it():
    """Every name a top-level function or class uses from this module is defined above its
    section's end (or in its own section): data flows from the top down."""
    section_of = {}
    banners = [(m.start(), int(m.group(1))) for m in re.finditer(r"\n# =+\n# (\d+)\. ", SOURCE)]
    def section(node):
        offset = sum(len(l) + 1 for l in SOURCE.split("\n")[: node.lineno - 1])
        return max([n for start, n in banners if start < offset], default=0)
    nodes = [n for n in TREE.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    for node in nodes:
        section_of[node.name] = section(node)
    for node in TREE.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Name):
                    section_of.setdefault(t.id, section(node))
    late = []
    for node in nodes + [n for n in TREE.body if isinstance(n, (ast.Assign, ast.AnnAssign))]:
        mine = section(node)
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        used -= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        used -= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                 for a in n.args + n.kwonlyargs + n.posonlyargs}
        late += [(getattr(node, "name", "?"), name, section_of[name]) for name in used
                 if name in section_of and section_of[name] > mine]
    assert not late, late
