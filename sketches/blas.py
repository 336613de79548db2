"""One BLAS thread for the small matrix products of drift scoring and calibration.

OpenBLAS hands every product to its thread pool. For the kernel matrices of ``sample_mmd``
(512 x 20 by 20 x 540) the hand-off costs more than the product: 0.2 ms on one thread, 0.9-1.3
ms wall and up to 4 ms of CPU (threads spinning) with two on this project's 2-core machines,
which made ``build_reference`` 4-5x slower. Scoring runs under :func:`one_blas_thread`; the
process keeps its own setting everywhere else.

>>> with one_blas_thread():
...     pass
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from typing import Any

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # finds the loaded BLAS libraries once (~1 ms)


def one_blas_thread() -> AbstractContextManager[Any]:
    """BLAS limited to one thread inside the ``with`` block (~10 µs to enter)."""
    limit: AbstractContextManager[Any] = _controller().limit(limits=1, user_api="blas")
    return limit
