"""Griffe extension: the docstrings' doctests shown as code on the site.

The package's docstrings follow Keras' style: an `Example:` line, then
doctest lines (`>>> ...` and their output) that `pytest --doctest-modules`
runs. Markdown would render them as quotes and read their outputs as
links, so each doctest block is fenced as a `pycon` code block.
"""

import re

import griffe

PROMPT = re.compile(r"^(\s*)>>> ")


def fence_doctests(text):
    """Wraps each doctest block of `text` (a docstring) in a code fence."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        match = PROMPT.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Fences the doctests of every docstring griffe loads."""

    def on_instance(self, *, node, obj, agent, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
