#!/usr/bin/env python3
"""Lists dependency cycles between the modules of src/: a module depends on another when
its code (outside comments and its `mod tests`) names a path into it, `crate::…` or
`super::…`, in a `use` line or inline. Usage: tools/import-cycles.py [src-dir] [folder ...]
(default: src, checking fed cli pretrain setup). Exit status 1 if a cycle exists."""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
folders = sys.argv[2:] or ["fed", "cli", "pretrain", "setup"]

def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return rel

graph = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        me = module_of(path)
        text = open(path).read()
        text = text.split("#[cfg(test)]\nmod tests")[0]
        text = "\n".join(l.split("//")[0] for l in text.splitlines())
        deps = set()
        for m in re.finditer(r"\b(crate|super)::([\w:]+)", text):
            kind, rest = m.group(1), m.group(2).split("::")
            if kind == "crate":
                target = rest
            else:
                base = me[:-1] if os.path.basename(path) != "mod.rs" else me[:-1]
                target = base + rest
            # the longest prefix that is a module file
            for n in range(len(target), 0, -1):
                cand = os.path.join(src, *target[:n])
                if os.path.isfile(cand + ".rs") or os.path.isfile(os.path.join(cand, "mod.rs")):
                    deps.add("::".join(target[:n]))
                    break
        # A module brought in by name (`use super::algorithms;`) and used as `algorithms::x`.
        for m in re.finditer(r"^\s*(?:pub )?use (crate|super)::([\w:]+);", text, re.M):
            kind, rest = m.group(1), m.group(2).split("::")
            target = rest if kind == "crate" else me[:-1] + rest
            name = target[-1]
            for u in re.finditer(r"(?<![\w:])" + name + r"::(\w+)", text):
                sub = os.path.join(src, *target, u.group(1))
                if os.path.isfile(sub + ".rs") or os.path.isfile(os.path.join(sub, "mod.rs")):
                    deps.add("::".join(target + [u.group(1)]))
        graph["::".join(me)] = deps - {"::".join(me)}

cycles = []
def visit(node, stack, seen):
    for d in sorted(graph.get(node, ())):
        if d in stack:
            cyc = stack[stack.index(d):] + [d]
            if any(c.split("::")[0] in folders for c in cyc):
                key = tuple(sorted(set(cyc)))
                if key not in seen:
                    seen.add(key)
                    cycles.append(cyc)
        elif len(stack) < 12:
            visit(d, stack + [d], seen)
seen = set()
for n in sorted(graph):
    visit(n, [n], seen)
for c in cycles:
    print(" -> ".join(c))
sys.exit(1 if cycles else 0)
