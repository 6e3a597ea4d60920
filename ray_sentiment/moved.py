"""Names that earlier versions documented at a package's top (`ray_sentiment.text.tokenize`), now in
its modules: a package's `__getattr__`, which imports the module only when the name is first used,
so that importing the package itself stays free (the checks before Ray rely on it)."""

import importlib
from collections.abc import Callable


def moved(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """`names`: each old name → the module (relative to `package`) that now holds it."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name], package), name)

    return __getattr__
