"""Unpickling data set files without letting them run code.

The reference's data sets (miniImageNet, tieredImageNet labels, the Meta-Dataset
conversions, CIFAR-100) come as pickles, and a pickle can name any importable
callable to run while loading. These files only ever need numpy arrays (and numpy
scalars) inside dicts, lists and strings, so the unpickler here resolves exactly
those names and refuses every other one before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import pickle
from typing import IO, Any

# (module, name) pairs a data set pickle may use. numpy 1.x writes ``numpy.core.*``, numpy 2 ``numpy._core.*``;
# both spellings are accepted and resolved in whichever the installed numpy has.
_NUMPY = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ (protocols 0-4)
    ("multiarray", "scalar"),  # numpy scalars such as np.int64(3) in a label list
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ at protocol 5
}
_NUMPY_TOP = {"ndarray", "dtype"}
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex",
             "bool"}
_COLLECTIONS = {"OrderedDict"}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a callable outside the allowed set; ``name`` says which (``module.name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refers to {name}, which a data set pickle never needs")
        self.name = name


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it (text, 'latin1'), and nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1", errors)


def _numpy_global(module: str, name: str) -> Any:
    """Resolve an allowed numpy name under ``numpy._core`` (numpy 2) or ``numpy.core`` (numpy 1.x)."""
    if module == "numpy":
        return getattr(importlib.import_module("numpy"), name)
    sub = module.rsplit(".", 1)[1]
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{sub}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def allowed_global(module: str, name: str) -> Any:
    """The object for an allowed (module, name) pair; UnsafePickleError for anything else."""
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, e.g. __builtin__.unicode
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module == "builtins" and name in _BUILTINS:
        return getattr(importlib.import_module("builtins"), name)
    if module == "collections" and name in _COLLECTIONS:
        return getattr(importlib.import_module("collections"), name)
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module == "numpy" and name in _NUMPY_TOP:
        return _numpy_global(module, name)
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "numpy" and parts[1] in ("core", "_core") and (parts[2], name) in _NUMPY:
        return _numpy_global(module, name)
    raise UnsafePickleError(f"{module}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose globals are limited to numpy arrays, numpy scalars and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        return allowed_global(module, name)


def safe_load(handle: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load`` restricted to data (see the module docstring); ``encoding`` as for pickle.load."""
    return RestrictedUnpickler(handle, encoding=encoding).load()
