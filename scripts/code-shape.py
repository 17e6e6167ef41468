#!/usr/bin/env python3
"""Shape of the wasm-side crates (core/src, filter/src): files over a line budget,
functions over a line budget, and import cycles between modules.

A cycle is counted among siblings at every level: an edge from module a::x::… to
module a::y::… (x != y) is an edge x → y among the children of `a` (the crate root for
top-level modules); a module using its own parent or child is not an edge. Test code
(`#[cfg(test)]` modules, `tests/` directories, `tests.rs`) is left out.

Usage: scripts/code-shape.py [--max-file N] [--max-fn N]; exit status 1 when anything
is over budget or a cycle exists.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {"core": "core/src", "filter": "filter/src"}
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_files(src):
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if "tests" in parts or parts[-1] == "tests":
                continue
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            yield os.path.join(dirpath, f), tuple(parts)


def strip_test_modules(lines):
    """The lines outside `#[cfg(test)]` items (by indentation: rustfmt's layout)."""
    out, skip_until, pending = [], None, False
    for line in lines:
        if skip_until is not None:
            if line.rstrip() == skip_until:
                skip_until = None
            out.append("")
            continue
        stripped = line.strip()
        if stripped.startswith("#[cfg(test)]"):
            pending = True
            out.append("")
            continue
        if pending and stripped.startswith("mod ") and stripped.endswith("{"):
            skip_until = line[: len(line) - len(line.lstrip())] + "}"
            pending = False
            out.append("")
            continue
        if pending and stripped.startswith("mod ") and stripped.endswith(";"):
            pending = False
            out.append("")
            continue
        pending = False
        out.append(line)
    return out


def functions(lines):
    """(name, first line number, length) of every fn, nested ones included."""
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(" + IDENT + ")", line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        # A one-line fn, or one whose body closes at the same indentation.
        if line.rstrip().endswith("}") and "{" in line:
            yield m.group(7), i + 1, 1
            continue
        for j in range(i + 1, len(lines)):
            if lines[j].rstrip() == indent + "}":
                yield m.group(7), i + 1, j - i + 1
                break
            if lines[j].rstrip().endswith(";") and j == i + 1 and "{" not in line:
                break


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` → ["a::b", "a::c::d", "a::c::e"]."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"\s+as\s+\w+$", "", tree)]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    return [p for item in items if item.strip() for p in expand_use_tree(prefix + item.strip())]


def references(text, module):
    """Module paths (as tuples) this file's code names, resolved to the crate root.
    Comments are left out: a doc link is not an import."""
    text = re.sub(r"//[^\n]*", "", text)
    paths = []
    for stmt in re.findall(r"\buse\s+([^;]+);", text, re.S):
        paths += expand_use_tree(re.sub(r"\s+", " ", stmt))
    body = re.sub(r"\buse\s+[^;]+;", "", text, flags=re.S)
    paths += re.findall(r"\b((?:crate|super|self)(?:::" + IDENT + ")+)", body)
    out = []
    for p in paths:
        segs = [s for s in p.replace(" ", "").split("::") if s]
        if not segs or segs[0] not in ("crate", "super", "self"):
            continue
        base = list(module)
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        else:
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        out.append(tuple(base + segs))
    return out


def tarjan(nodes, edges):
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sccs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-file", type=int, default=500)
    ap.add_argument("--max-fn", type=int, default=80)
    args = ap.parse_args()
    failed = False
    for crate, src in CRATES.items():
        src = os.path.join(ROOT, src)
        files = dict((m, f) for f, m in module_files(src))
        modules = set(files)
        # sibling graphs, keyed by parent module
        graphs = {}
        for module, path in sorted(files.items()):
            with open(path, encoding="utf-8") as fh:
                raw = fh.read().splitlines()
            if len(raw) > args.max_file:
                print(f"{crate}: file {os.path.relpath(path, ROOT)}: {len(raw)} lines")
                failed = True
            lines = strip_test_modules(raw)
            for name, line, length in functions(lines):
                if length > args.max_fn:
                    print(f"{crate}: fn {name} ({os.path.relpath(path, ROOT)}:{line}): {length} lines")
                    failed = True
            for ref in references("\n".join(lines), module):
                # the longest module prefix of the path
                target = next((ref[:k] for k in range(len(ref), -1, -1) if ref[:k] in modules or k == 0), ())
                k = 0
                while k < min(len(module), len(target)) and module[k] == target[k]:
                    k += 1
                if k == len(module) or k == len(target):
                    continue  # same module, or ancestor / descendant
                parent = module[:k]
                graphs.setdefault(parent, {}).setdefault(module[k], set()).add(target[k])
        for parent, edges in sorted(graphs.items()):
            nodes = set(edges) | {w for ws in edges.values() for w in ws}
            for scc in tarjan(nodes, edges):
                where = "::".join(parent) or "crate root"
                print(f"{crate}: import cycle among the modules of {where}: {' ↔ '.join(scc)}")
                failed = True
        print(f"{crate}: {len(files)} modules, {sum(len(e) for g in graphs.values() for e in g.values())} sibling edges checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
