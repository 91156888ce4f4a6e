#!/usr/bin/env python3
"""The house rules for the source layout, checked: no import circle between
the files of a crate, and no file with more than 700 lines of code (its unit
tests, the trailing `#[cfg(test)] mod tests`, excluded).

    scripts/layout.py            # check every crate; exit 1 on a violation
    scripts/layout.py --graph    # also print each crate's file graph

An import is any path a file names: `crate::a::b`, `super::x`, `self::x`,
and the modules a `use` brings in (braces expanded). A name the target
module only re-exports (`pub use inner::Thing`) counts as an import of the
file that defines it, so `crate::Outcome` is an edge to `outcome.rs`, not to
`lib.rs`. A module's `mod` declarations, and its own `pub use`
re-exports, are not imports: a parent that re-exports its child's items
does not depend on them.
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 700
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_files(src):
    """{module path tuple: file} for a crate's src dir."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("lib", "main") and len(parts) == 1:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def strip_tests(text):
    """The file without its trailing unit tests and without comments."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(\w+\))?\s+)?mod\s+tests\b", text, re.M)
    if m:
        text = text[: m.start()]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text


def code_lines(text):
    return sum(1 for line in strip_tests(text).splitlines() if line.strip())


def expand_use(body):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    body = re.sub(r"\s+", "", body)

    def split_top(s):
        out, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                out.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            out.append(cur)
        return out

    def go(prefix, s):
        i = s.find("{")
        if i < 0:
            return [prefix + s]
        head, inner = s[:i], s[i + 1 : s.rfind("}")]
        res = []
        for part in split_top(inner):
            res += go(prefix + head, part)
        return res

    return go("", body)


def uses(text):
    """Every `use` path of a file (expanded), with whether it is `pub`."""
    out = []
    for m in re.finditer(r"^\s*(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text, re.M):
        for p in expand_use(m.group(3)):
            p = re.sub(r"\s+as\s+\w+$", "", p.replace(" as ", " as "))
            p = re.sub(r"as" + IDENT + "$", "", p) if False else p
            out.append((bool(m.group(1)), p.split(" as ")[0]))
    return out


def resolve(mods, reexports, here, path):
    """The module (tuple) a path names, starting at module `here`."""
    parts = [p for p in path.split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] == "super":
        base = here
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        rest = parts
    elif parts[0] == "self":
        base, rest = here, parts[1:]
    else:
        return None
    cur = base
    for i, name in enumerate(rest):
        nxt = cur + (name,)
        if nxt in mods:
            cur = nxt
            continue
        # An item of `cur`: is it a re-export of another module's item?
        target = reexports.get((cur, name))
        seen = set()
        while target and target not in seen:
            seen.add(target)
            mod, item = target
            nested = reexports.get((mod, item))
            if nested is None:
                return mod
            target = nested
        return cur
    return cur


def crate_graph(src):
    mods = module_files(src)
    texts = {m: strip_tests(open(f, encoding="utf-8").read()) for m, f in mods.items()}
    # (module, name) -> (module defining it, name), for `pub use` re-exports.
    reexports = {}
    for m, text in texts.items():
        for public, p in uses(text):
            if not public:
                continue
            parts = p.split("::")
            name = parts[-1]
            if name in ("*", "self"):
                continue
            parent = resolve(mods, {}, m, "::".join(parts[:-1])) if parts[0] in ("crate", "super", "self") else None
            if parent is None and parts[0] not in ("crate", "super", "self"):
                # `pub use inner::Item;` relative to this module.
                cand = m + (parts[0],)
                if cand in mods:
                    parent = resolve(mods, {}, m, "self::" + "::".join(parts[:-1]))
            if parent is not None:
                reexports[(m, name)] = (parent, name)
    edges = defaultdict(set)
    for m, text in texts.items():
        paths = [p for public, p in uses(text) if not public]
        paths += re.findall(r"\b((?:crate|super|self)(?:::" + IDENT + ")+)", text)
        # Paths through a child module declared here (`native::x`) are imports too.
        for child in [k for k in mods if len(k) == len(m) + 1 and k[: len(m)] == m]:
            if re.search(r"(?<![:\w])" + child[-1] + r"::" + IDENT, re.sub(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+\w+;", "", text, flags=re.M)):
                edges[m].add(child)
        for p in paths:
            if not p.startswith(("crate", "super", "self")):
                # `use child::x` relative to this module.
                first = p.split("::")[0]
                if m + (first,) in mods:
                    p = "self::" + p
                else:
                    continue
            t = resolve(mods, reexports, m, p)
            if t is not None and t != m:
                edges[m].add(t)
    return mods, edges


def cycles(nodes, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main():
    show = "--graph" in sys.argv
    bad = 0
    crates_dir = os.path.join(ROOT, "crates")
    for crate in sorted(os.listdir(crates_dir)):
        src = os.path.join(crates_dir, crate, "src")
        if not os.path.isdir(src):
            continue
        mods, edges = crate_graph(src)
        for m, f in sorted(mods.items()):
            n = code_lines(open(f, encoding="utf-8").read())
            if n > MAX_LINES:
                bad += 1
                print(f"{os.path.relpath(f, ROOT)}: {n} lines of code (unit tests excluded), over {MAX_LINES}")
        for comp in cycles(list(mods), edges):
            bad += 1
            print(f"{crate}: import circle: {' <-> '.join(sorted(name(m) for m in comp))}")
        if show:
            print(f"# {crate}")
            for m in sorted(mods):
                print(f"  {name(m)} -> {', '.join(sorted(name(t) for t in edges.get(m, ())))}")
    if bad:
        print(f"layout: {bad} violation(s)")
        return 1
    print("layout: no file over 700 lines of code, no import circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
