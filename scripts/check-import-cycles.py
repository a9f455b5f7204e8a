#!/usr/bin/env python3
"""Fails when two source files of one crate import each other, directly or
around a loop (scripts/test.sh runs it; usage: check-import-cycles.py [crates]).

An edge A -> B is a path in A (crate::x, super::x, self::x, or a child module
named in A) that resolves to file B; a parent mod.rs that declares a child
and uses it counts, so a child must not import from its parent's file what
a sibling defines. Code after the first #[cfg(test)] is ignored, and so are
super:: paths inside inline modules. A reading by pattern, not by rustc: it
is meant to catch the layering mistakes, not to prove their absence."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'crates'
def modpath_of(src, f):
    rel = os.path.relpath(f, src)[:-3].split('/')
    if rel[-1] in ('mod', 'lib', 'main'): rel = rel[:-1]
    return tuple(rel)
report = 0
for crate in sorted(os.listdir(root)):
    src = os.path.join(root, crate, 'src')
    if not os.path.isdir(src): continue
    files = {}
    for d, _, fs in os.walk(src):
        for n in fs:
            if n.endswith('.rs'):
                p = os.path.join(d, n); files[modpath_of(src, p)] = p
    # main.rs and lib.rs both map to (): prefer lib
    edges = {m: set() for m in files}
    for m, p in files.items():
        text = open(p).read().split('#[cfg(test)]')[0]
        text = re.sub(r'//.*', '', text)
        base = list(m) if not (p.endswith('mod.rs') or p.endswith('lib.rs') or p.endswith('main.rs')) else list(m)
        here = list(m)
        # parent module of this file
        inline = re.search(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{', text, re.M)
        cut = inline.start() if inline else len(text)
        for mt in re.finditer(r'\b(crate|super|self)((?:::\w+)+)', text):
            if mt.group(1) != 'crate' and mt.start() > cut: continue
            head, rest = mt.group(1), mt.group(2).split('::')[1:]
            if head == 'crate': path = rest
            elif head == 'self': path = here + rest
            else:
                path = here[:-1] + rest
                # nested super::super
            # handle super::super
            while 'super' in path:
                i = path.index('super'); path = path[:i-1] + path[i+1:]
            # longest prefix that is a file
            for k in range(len(path), -1, -1):
                t = tuple(path[:k])
                if t in files:
                    if t != m: edges[m].add(t)
                    break
        # also `use super::{a, b}` forms
        for mt in re.finditer(r'\b(crate|super)::\{([^}]*)\}', text):
            head = mt.group(1)
            base = [] if head == 'crate' else here[:-1]
            for item in re.split(r'[,\s]+', mt.group(2)):
                item = item.split('::')[0]
                if not item or item == 'self': continue
                t = tuple(base + [item])
                if t in files and t != m: edges[m].add(t)
    for m, p in files.items():
        text = open(p).read().split('#[cfg(test)]')[0]
        for md in re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', text, re.M):
            t = tuple(list(m) + [md])
            if t in files and re.search(r'(?<![:\w])' + md + r'::', text):
                edges[m].add(t)
    # find cycles via DFS (report SCCs > 1)
    index, low, stack, on, sccs, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: sccs.append(comp)
    for v in edges:
        if v not in index: strong(v)
    for comp in sccs:
        report += 1
        print(crate, ':', ' <-> '.join('/'.join(x) or '(root)' for x in comp))
        for a in comp:
            for b in edges[a]:
                if b in comp: print('    ', '/'.join(a) or '(root)', '->', '/'.join(b) or '(root)')
print('cycles:', report)
sys.exit(1 if report else 0)
