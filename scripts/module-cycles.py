"""Fails when two modules of a crate depend on each other, directly or around a loop.

The layers of the library read top-down (ARCHITECTURE.md, "Code map"); this keeps them so.
A module's dependencies are the `crate::NAME` paths in its code outside its test module
(comments left out). A child module (`store/redis.rs`) counts as part of its parent.

Usage: python3 scripts/module-cycles.py CRATE_SRC_DIR...   (.ci/run passes shared/src and
preview/src); prints the graph's cycles and exits 1 when there is one."""
import os, re, sys


def graph(src):
    mods = {f[:-3] for f in os.listdir(src) if f.endswith(".rs") and f not in ("lib.rs", "main.rs")}
    g = {}
    for m in mods:
        text = ""
        for path in [os.path.join(src, m + ".rs")] + sorted(
                os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(src, m)) for f in fs if f.endswith(".rs")):
            text += open(path).read().split("#[cfg(test)]\nmod tests")[0]
        text = re.sub(r"//[^\n]*", "", text)
        deps = set(re.findall(r"crate::([a-z_]+)", text))
        for block in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
            deps |= set(re.findall(r"(?:^|[\s,{])([a-z_]+)(?=::|\s*,|\s*\}|$)", block))
        g[m] = sorted(d for d in deps if d in mods and d != m)
    return g


def cycles(g):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


failed = False
for src in sys.argv[1:]:
    found = cycles(graph(src))
    for c in found:
        print(f"{src}: modules that depend on each other: {' <-> '.join(c)}")
    failed |= bool(found)
sys.exit(1 if failed else 0)
