"""Optional C extensions: the warm-started assignment solvers (merging/matching/_lap.c) and the
grouped convolutions of zoo training (weightspace/zoo/_gconv.c).

Everything else is configured in pyproject.toml. Without a C compiler the build skips the
extensions (optional=True): weight matching then uses SciPy's solver, zoo training torch's
convolutions.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("merging.matching._lap", ["merging/matching/_lap.c"],
                  depends=["merging/matching/_lap_impl.h"], extra_compile_args=["-O3"], optional=True),
        Extension("weightspace.zoo._gconv", ["weightspace/zoo/_gconv.c"],
                  depends=["weightspace/zoo/_gconv_impl.h"], extra_compile_args=["-O3"], optional=True),
    ],
)
