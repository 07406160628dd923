"""``python -m cbam_fused.info``: print what a bug report needs (``--json`` for a machine-readable dict).

The code lives in ``cbam_fused._info``; ``cbam_fused.info()`` is the same report as a function.
"""
import sys
import types

from ._info import info, main


class _CallableModule(types.ModuleType):
    # `import cbam_fused.info` rebinds the package's attribute `info` from the function to this module;
    # keep `cbam_fused.info()` working then
    def __call__(self, file=sys.stdout):
        return info(file)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
