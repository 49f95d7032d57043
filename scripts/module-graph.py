#!/usr/bin/env python3
"""Prints the import graph of a crate's modules: files, largest file, cycles, deepest chain.

Usage: scripts/module-graph.py kms-server/src [--folders]

A module is a file (`a/b.rs` and `a/b/mod.rs` are `a::b`); with --folders, a top-level
folder or root file. An edge A -> B means A's code names `crate::B...` or `super::B`;
comments and `#[cfg(test)] mod` blocks (at the end of a file) are not code the module runs. Used to check the layout rule of kms-server's lib.rs:
no cycle between folders.
"""
import os
import re
import sys


def modules(src):
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == 'mod':
                rel = rel[:-1]
            if rel in (['lib'], ['main']):
                rel = ['crate:' + rel[0]]
            out['::'.join(rel)] = path
    return out


def refs(text):
    """Every `crate::a::b` path, expanding `use crate::{a::b, c}` groups one level."""
    found = set()
    for m in re.finditer(r'crate::\{([^}]*)\}', text, re.S):
        for part in m.group(1).split(','):
            part = part.strip().split(' ')[0]
            if part and part[0].islower():
                found.add(part.split('::{')[0])
            elif part:
                found.add('@' + part)
    for m in re.finditer(r'crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)', text):
        found.add(m.group(1))
    for m in re.finditer(r'crate::([A-Z]\w*)', text):
        found.add('@' + m.group(1))
    return found


def resolve(path, mods):
    parts = path.split('::')
    for n in range(len(parts), 0, -1):
        name = '::'.join(parts[:n])
        if name in mods:
            return name
    return None


def main():
    src = sys.argv[1]
    folders = '--folders' in sys.argv
    mods = modules(src)
    sizes = {m: sum(1 for _ in open(p)) for m, p in mods.items()}
    # `crate::Seal` and the like: the items lib.rs re-exports, named by their module.
    alias = {}
    lib = os.path.join(src, 'lib.rs')
    if os.path.exists(lib):
        for m in re.finditer(r'^pub use ([a-z_:]+)::(?:\{([^}]*)\}|(\w+));', open(lib).read(), re.M):
            for item in (m.group(2) or m.group(3)).split(','):
                alias[item.strip()] = m.group(1)
    graph = {}
    for m, p in mods.items():
        text = open(p).read()
        cut = re.search(r'^#\[cfg\(test\)\]\s*mod \w+ \{', text, re.M)
        if cut:
            text = text[:cut.start()]
        text = '\n'.join(line for line in text.split('\n') if not line.lstrip().startswith('//'))
        deps = set()
        for r in refs(text):
            if r.startswith('@'):
                r = alias.get(r[1:], '')
            t = resolve(r, mods)
            if t and t != m:
                deps.add(t)
        # `super::x` inside a folder names a sibling.
        parent = m.rsplit('::', 1)[0] if '::' in m else None
        for r in re.findall(r'super::([a-z_][a-z0-9_]*)', text):
            t = resolve(f'{parent}::{r}' if parent else r, mods)
            if t and t != m:
                deps.add(t)
        graph[m] = deps
    if folders:
        top = lambda m: m.split('::')[0]
        g = {}
        for m, deps in graph.items():
            g.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
        graph = g
    print(f'files: {len(mods)}; largest: {max(sizes.values())} lines '
          f'({max(sizes, key=sizes.get)})')
    # Cycles: strongly connected components of more than one node.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    cycles = [sorted(c) for c in comps if len(c) > 1]
    print('cycles:', '; '.join(' <-> '.join(c) for c in cycles) if cycles else 'none')
    # Deepest chain, over the graph with each cycle collapsed to one node.
    comp_of = {v: i for i, c in enumerate(comps) for v in c}
    dag = {}
    for v, deps in graph.items():
        dag.setdefault(comp_of[v], set()).update(
            comp_of[d] for d in deps if d in comp_of and comp_of[d] != comp_of[v])
    depth = {}

    def longest(c):
        if c not in depth:
            best = [c]
            for d in dag.get(c, ()):
                chain = [c] + longest(d)
                if len(chain) > len(best):
                    best = chain
            depth[c] = best
        return depth[c]

    chain = max((longest(c) for c in dag), key=len)
    names = ['{' + ','.join(sorted(comps[c])) + '}' if len(comps[c]) > 1 else comps[c][0]
             for c in chain]
    print(f'deepest import chain: {len(chain)} levels: ' + ' -> '.join(names))
    if folders:
        for m in sorted(graph):
            print(f'  {m} -> {", ".join(sorted(graph[m])) or "-"}')


main()
