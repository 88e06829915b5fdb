"""Sphinx configuration for the tinker_sync documentation.

Build (warnings are errors; a public member without a docstring is a warning)::

    sphinx-build -W --keep-going -b html docs docs/_build
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import tinker_sync  # noqa: E402

project = "tinker_sync"
author = "tinker_sync contributors"
copyright = "tinker_sync contributors"
release = tinker_sync.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Broken cross-references are warnings (and so errors). Names from outside the project cannot resolve
# without intersphinx, which needs the network: those are the only ones ignored.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(concurrent\.futures|collections\.abc|typing|typing_extensions|datetime|pathlib|os|io|logging"
               r"|threading|enum|http|urllib3|requests|numpy|torch|tokenizers|attrs?|tarfile|json|pickle|argparse)(\..*)?"),
    (r"py:.*", r"(Future|Callable|Iterator|Iterable|Mapping|Sequence|Collection|Path|Any|Literal|Self|TypeAlias"
               r"|NDArray|np\..*|npt\..*|ndarray|Tensor|T|R|_T|ExcInfo)"),
    (r"py:class", r"(int|str|float|bool|bytes|dict|list|tuple|set|frozenset|object|type|None|Exception"
                  r"|BaseException|ValueError|TypeError|RuntimeError|TimeoutError)"),
    (r"py:exc", r"(TypeError|ValueError)(/(TypeError|ValueError))*"),
    # Internal classes that appear in signatures and return annotations; not part of the public API.
    (r"py:class", r"(tinker_sync\.(.*\.)?_.*|Runtime|FailResponse|tinker_sync\.local\._faults\.FailResponse)"),
    # Raised by ServiceClient/ClientConfig (a ValueError); documented as tinker_sync._config.InvalidConfigError.
    (r"py:exc", r"InvalidConfigError"),
]

_PUBLIC_KINDS = ("class", "exception", "function", "method", "property")


def _own_doc(obj: Any) -> str | None:
    if isinstance(obj, property):
        obj = obj.fget
    return obj.__doc__ if getattr(obj, "__doc__", None) else None


def _warn_undocumented(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """Every public class, function, method and property of tinker_sync that autodoc lists needs a docstring."""
    # Undocumented members arrive with skip=True (no :undoc-members:), so the check cannot look at ``skip``.
    if name.startswith("_") or getattr(options, "exclude_members", None) and name in options.exclude_members:
        return None
    module = getattr(obj.fget if isinstance(obj, property) else obj, "__module__", "") or ""
    documentable = inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, property)
    if module.startswith("tinker_sync") and documentable and not _own_doc(obj):
        from sphinx.util import logging as sphinx_logging

        sphinx_logging.getLogger(__name__).warning("public member %r (of a %s) has no docstring", name, what)
    return None


def setup(app: Any) -> None:
    """Register the missing-docstring check."""
    app.connect("autodoc-skip-member", _warn_undocumented)
