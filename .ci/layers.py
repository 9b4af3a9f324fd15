#!/usr/bin/env python3
"""Checks that imports between the crate's top-level modules only point down the layers
(docs/architecture.md draws them) and that no import loop crosses modules.

Reads every `crate::…` path in src/ (use trees included). Prints the import graph;
exits 1 on an upward import or a loop. Usage: python3 .ci/layers.py [src]
"""
import collections
import os
import re
import sys

LAYERS = {
    0: ["dates", "db", "error", "events", "global_id", "guard", "health", "jobs", "paging", "server", "settings", "state", "storage", "telemetry"],
    1: ["catalog", "feed", "intake", "records", "uploads"],
    2: ["app", "config", "graphql", "http", "node", "main", "lib"],
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def crate_imports(text):
    """Top-level module names that `text` reaches through `crate::`."""
    names = set()
    for match in re.finditer(r"crate::", text):
        rest = text[match.end():]
        if rest.startswith("{"):
            depth, name, top = 0, "", True
            for char in rest:
                if char == "{":
                    depth += 1
                    top = depth == 1
                    continue
                if char == "}":
                    depth -= 1
                    if depth == 0:
                        break
                if depth == 1 and top and (char.isalnum() or char == "_"):
                    name += char
                    continue
                if name:
                    names.add(name)
                    name = ""
                if depth == 1 and char == ",":
                    top = True
                elif depth == 1 and char == ":":
                    top = False
            if name:
                names.add(name)
        else:
            word = re.match(r"\w+", rest)
            if word:
                names.add(word.group(0))
    return names


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    edges = collections.defaultdict(set)
    where = collections.defaultdict(set)
    unknown = set()
    for folder, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".rs"):
                continue
            path = os.path.join(folder, file)
            module = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
            with open(path, encoding="utf-8") as source:
                text = re.sub(r"//[^\n]*", "", source.read())
            for target in crate_imports(text):
                if target == module or target in ("self", "super"):
                    continue
                if target not in LAYER_OF:
                    unknown.add(target)
                    continue
                edges[module].add(target)
                where[(module, target)].add(os.path.relpath(path, root))
    failed = False
    for module in sorted(set(edges) | unknown):
        if module not in LAYER_OF and module not in unknown:
            print(f"module `{module}` has no layer in .ci/layers.py")
            failed = True
    print("imports between modules (layer: 0 infrastructure, 1 domains, 2 assembly):")
    for module in sorted(edges):
        print(f"  {module} [{LAYER_OF.get(module, '?')}] -> {', '.join(sorted(edges[module]))}")
    upward = sorted((a, b) for a in edges for b in edges[a] if LAYER_OF.get(a, 2) < LAYER_OF[b])
    print(f"upward imports: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}: {', '.join(sorted(where[(a, b)]))}")
    loops = strongly_connected(edges)
    print(f"import loops between modules: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(sorted(loop)))
    if unknown:
        print(f"unknown modules imported: {', '.join(sorted(unknown))}")
    return 1 if failed or upward or loops or unknown else 0


def strongly_connected(edges):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


if __name__ == "__main__":
    sys.exit(main())
