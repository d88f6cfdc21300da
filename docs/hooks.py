"""MkDocs hooks: the documentation site is built from the repository as it is.

- The README is the site's home page, and the benchmark reports, notebooks
  and scripts the guides cite are published beside the guides, so every
  link works both on the repository's web view and on the built site.
- The API reference is generated: one page per module of `freezeout_tf`
  that declares `__all__`, listing exactly those names, from their
  docstrings (mkdocstrings reads the sources; nothing is imported). A
  package's page (the top level, each layer's folder) gives its docstring
  and links each name it re-exports to the page of the module defining it;
  the navigation groups the pages by folder, as the package is laid out.
- A public name without a docstring fails the build, as a broken link does
  under `mkdocs build --strict`.
"""

import os
import posixpath
import re

import griffe
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "freezeout_tf"
# Repository folders whose files the documentation links to.
PUBLISHED = ("benchmarks", "notebooks", "scripts")
PUBLISHED_SUFFIXES = (".md", ".json", ".png", ".ipynb", ".py")
# Markdown link targets: [text](target) and ![alt](target).
LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _package():
    return griffe.load(PACKAGE, search_paths=[ROOT], resolve_aliases=False)


def _public_modules(package):
    """(dotted name, module) of every module that declares `__all__`."""
    found = []

    def visit(module):
        if module.exports is not None:
            found.append((module.path, module))
        for sub in module.modules.values():
            if not sub.is_alias:  # an imported module is not a submodule
                visit(sub)

    visit(package)
    return sorted(found, key=lambda item: (item[0] != PACKAGE, item[0]))


def _undocumented(package):
    missing = []
    for path, module in _public_modules(package):
        if not module.docstring:
            missing.append(path)
        for name in module.exports:
            member = module.members.get(name)
            if member is None:
                missing.append(f"{path}.{name} (listed in __all__, not defined)")
                continue
            if member.is_alias or member.is_module or member.is_attribute:
                continue  # re-exports are documented where they live;
                # constants by the module's docstring
            if not member.docstring:
                missing.append(f"{path}.{name}")
    return missing


def _defining_page(target, pages):
    """The page of the module that defines `target` (a dotted path)."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in pages:
            return ".".join(parts)
        parts.pop()
    raise PluginError(f"no API page documents {target}")


def _package_page(path, module, pages):
    lines = [f"# `{path}`", "", f"::: {path}", "    options:",
             "      show_root_heading: false", "      members: false", "",
             "| name | defined in |", "|---|---|"]
    for name in module.exports:
        member = module.members[name]
        target = member.target_path if member.is_alias else member.path
        page = _defining_page(target, pages)
        lines.append(f"| `{name}` | [`{page}`]({page}.md) |")
    return "\n".join(lines) + "\n"


def _api_page(path, module, pages):
    if module.is_init_module:
        return _package_page(path, module, pages)
    lines = [f"# `{path}`", ""]
    lines.append(f"::: {path}")
    lines.append("    options:")
    lines.append("      show_root_heading: false")
    lines.append("      members:")
    for name in module.exports:
        lines.append(f"        - {name}")
    return "\n".join(lines) + "\n"


def on_config(config):
    package = _package()
    missing = _undocumented(package)
    if missing:
        raise PluginError(
            "public names without a docstring: " + ", ".join(missing))
    modules = _public_modules(package)
    pages = {path for path, _ in modules}
    config["_freezeout_api"] = [
        (path, _api_page(path, module, pages)) for path, module in modules]
    # The generated pages join the nav's "API reference" section, grouped
    # by folder (freezeout_tf.core, freezeout_tf.split, ...).
    groups = {}
    for path, _ in modules:
        folder = ".".join(path.split(".")[:2])
        groups.setdefault(folder, []).append({path: f"api/{path}.md"})
    nav = []
    for folder, entries in groups.items():
        if folder == PACKAGE or len(entries) == 1:
            nav.extend(entries)
        else:
            nav.append({folder: entries})
    for section in config["nav"]:
        if isinstance(section, dict) and "API reference" in section:
            section["API reference"].extend(nav)
    return config


def on_files(files, config):
    files.append(File.generated(
        config, "index.md", abs_src_path=os.path.join(ROOT, "README.md")))
    for folder in PUBLISHED:
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(names):
                if not name.endswith(PUBLISHED_SUFFIXES):
                    continue
                full = os.path.join(dirpath, name)
                uri = os.path.relpath(full, ROOT).replace(os.sep, "/")
                files.append(File.generated(config, uri, abs_src_path=full))
    for path, page in config["_freezeout_api"]:
        files.append(File.generated(config, f"api/{path}.md", content=page))
    return files


def _repository_path(file):
    """Where a documentation page lives in the repository (posix)."""
    if file.src_uri == "index.md":
        return "README.md"
    if file.abs_src_path and file.abs_src_path.startswith(ROOT + os.sep) \
            and not file.abs_src_path.startswith(
                os.path.join(ROOT, "docs") + os.sep):
        return os.path.relpath(file.abs_src_path, ROOT).replace(os.sep, "/")
    return "docs/" + file.src_uri


def _site_path(repository_path):
    if repository_path == "README.md":
        return "index.md"
    if repository_path.startswith("docs/"):
        return repository_path[len("docs/"):]
    return repository_path


def on_page_markdown(markdown, page, config, files):
    """Point links written for the repository at the same file on the site."""
    here = _repository_path(page.file)
    site_here = page.file.src_uri

    def rewrite(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(
                ("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(
            posixpath.join(posixpath.dirname(here), path))
        site = posixpath.relpath(_site_path(resolved),
                                 posixpath.dirname(site_here) or ".")
        return match.group(1) + site + ("#" + anchor if anchor else "") \
            + match.group(3)

    return LINK.sub(rewrite, markdown)
