"""Triton kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1), for exactness tests without a
GPU. Import this before any kernel is defined. The interpreter turns a scalar into a 1-element array and
converts a loop bound with int(), which numpy 2.4 refuses for 1-d arrays: the bound is read as its element."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import triton.runtime.interpreter as _interp  # noqa: E402

_patch_tensor = _interp._patch_lang_tensor


def _patch_lang_tensor(tensor, scope):
    _patch_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))


_interp._patch_lang_tensor = _patch_lang_tensor
