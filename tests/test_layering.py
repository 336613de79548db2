"""placeholder"""

import sketches


def test_import() -> None:
    assert sketches.__file__
