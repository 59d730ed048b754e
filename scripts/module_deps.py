#!/usr/bin/env python3
"""The module dependency graph of one crate of the workspace.

Usage: python3 scripts/module_deps.py <crate>/src [--tests] [--edges] [--check]

Reads which file-modules name which (`use` trees and inline `crate::`/`super::` paths; comments,
and test modules unless --tests, left out), then prints the import loops between files and
between top-level modules (strongly connected components), and the floors: a module's floor is
the length of its longest chain of imports down to a module that imports nothing of the crate.
A child naming its parent's items is not a loop (the parent only declares the child). --edges
lists what each top-level module imports; --check exits 1 when there is any loop."""
import os, re, sys

def strip_comments(src):
    src = re.sub(r'/\*.*?\*/', '', src, flags=re.S)
    out = []
    for line in src.split('\n'):
        # drop // comments outside strings (good enough: no '//' inside our strings matters here)
        i = line.find('//')
        if i >= 0 and line.count('"', 0, i) % 2 == 0:
            line = line[:i]
        out.append(line)
    return '\n'.join(out)

def strip_tests(src):
    # drop #[cfg(test)] mod tests { ... } blocks and `#[cfg(test)] mod x;` (brace matching)
    while True:
        m = re.search(r'#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod\s+\w+\s*\{', src)
        if not m: break
        depth = 0; i = m.end() - 1
        while i < len(src):
            if src[i] == '{': depth += 1
            elif src[i] == '}':
                depth -= 1
                if depth == 0: break
            i += 1
        src = src[:m.start()] + src[i+1:]
    return src

def expand_use(tree):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']"""
    tree = tree.strip()
    i = tree.find('{')
    if i < 0:
        return [re.sub(r'\s+as\s+\w+$', '', tree)]
    prefix = tree[:i]
    inner = tree[i+1:tree.rfind('}')]
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
        else:
            if ch == '{': depth += 1
            if ch == '}': depth -= 1
            cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        p = p.strip()
        if not p: continue
        for e in expand_use(p):
            res.append(prefix + e if e != 'self' else prefix.rstrip(':'))
    return res

def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ('mod', 'lib'): rel = rel[:-1]
    return tuple(rel)

def main(root, tests=False):
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                files[module_of(root, p)] = p
    mods = set(files)
    edges = {m: set() for m in mods}
    for m, p in files.items():
        src = strip_comments(open(p).read())
        if not tests:
            src = strip_tests(src)
        paths = []
        for u in re.finditer(r'\buse\s+([^;]+);', src, flags=re.S):
            paths += expand_use(re.sub(r'\s+', ' ', u.group(1)))
        src_wo_use = re.sub(r'\buse\s+[^;]+;', '', src, flags=re.S)
        paths += re.findall(r'\b(?:crate|super)(?:::\w+)+', src_wo_use)
        is_dir = os.path.basename(p) in ('mod.rs', 'lib.rs')
        for path in paths:
            segs = [s for s in path.replace(' ', '').split('::') if s]
            if not segs or segs[0] not in ('crate', 'super', 'self'): continue
            if segs[0] == 'crate':
                base, rest = (), segs[1:]
            else:
                base = m
                rest = segs
                while rest and rest[0] in ('super', 'self'):
                    if rest[0] == 'super': base = base[:-1]
                    rest = rest[1:]
            target = base
            for s in rest:
                if base + (s,) in mods or (target + (s,)) in mods:
                    target = target + (s,)
                else:
                    break
            if target != m and target in mods:
                edges[m].add(target)
    return files, edges

def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in nodes:
        if v not in index: visit(v)
    return out

def floors(nodes, edges):
    level = {}
    def lv(v, seen=()):
        if v in level: return level[v]
        if v in seen: return 0
        deps = [lv(w, seen + (v,)) for w in edges.get(v, ()) if w != v]
        level[v] = 1 + max(deps) if deps else 0
        return level[v]
    for v in nodes: lv(v)
    return level

def name(m): return '::'.join(m) or 'lib'

if __name__ == '__main__':
    if len(sys.argv) < 2 or not os.path.isdir(sys.argv[1]):
        sys.exit(__doc__)
    root = sys.argv[1]
    tests = '--tests' in sys.argv
    files, edges = main(root, tests)
    loops = [c for c in sccs(list(files), edges) if len(c) > 1]
    print(f"file modules: {len(files)}; import loops between files: {len(loops)}")
    for c in loops: print('  loop:', ' <-> '.join(name(x) for x in c))
    top = {}
    for m, ds in edges.items():
        if not m: continue
        for d in ds:
            if d and d[0] != m[0]:
                top.setdefault(m[0], set()).add(d[0])
        top.setdefault(m[0], set())
    tl = [c for c in sccs(list(top), top) if len(c) > 1]
    print(f"top-level modules: {len(top)}; import loops between them: {len(tl)}")
    for c in tl: print('  loop:', ' <-> '.join(c))
    fl = floors(list(top), top)
    for lvl in sorted(set(fl.values())):
        ms = sorted(k for k, v in fl.items() if v == lvl)
        print(f"  floor {lvl}: {', '.join(ms)}")
    if '--edges' in sys.argv:
        for k in sorted(top): print(f"  {k} -> {', '.join(sorted(top[k]))}")
    if '--check' in sys.argv and (loops or tl):
        sys.exit(f"{root}: import loops (see above)")
