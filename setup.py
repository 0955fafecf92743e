"""Optional C extension: the warm-started assignment solver (merging/matching/_lap.c).

Everything else is configured in pyproject.toml. Without a C compiler the build skips the
extension (optional=True) and weight matching uses SciPy's solver instead.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("merging.matching._lap", ["merging/matching/_lap.c"],
                  depends=["merging/matching/_lap_impl.h"], extra_compile_args=["-O3"], optional=True),
    ],
)
