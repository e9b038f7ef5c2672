"""The one place onramp imports Reverb and TensorFlow.

Reverb cannot run without TensorFlow (its extension links against TF), and the
released dm-reverb 0.14.0 exists only for CPython 3.9-3.11, against TensorFlow 2.15.
This module checks the interpreter first, so a wrong Python fails with one clear
line instead of an import error deep inside a wheel, and quiets TensorFlow's C++
start-up logging. The replay modules import `reverb` and `tf` from here; other
packages import the replay modules, never reverb or TensorFlow directly.

In a process that also uses torch, import this module (or a replay module that
imports it) before torch: TensorFlow and torch loaded the other way round have a
history of crashes and protobuf clashes.
"""

from __future__ import annotations

import os
import sys
import warnings

if sys.version_info[:2] != (3, 11):
    raise RuntimeError(
        "onramp's replay needs Python 3.11: dm-reverb 0.14.0 ships no wheels for "
        f"Python {sys.version_info[0]}.{sys.version_info[1]}"
    )

# Only TensorFlow's own C++ info lines (CPU feature notices); warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Imported after the version check and the log level on purpose. Reverb's TF version
# check uses distutils, which warns on every import; that warning is not the user's.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"reverb\.")
    import reverb
import tensorflow as tf

__all__ = ["reverb", "tf"]
