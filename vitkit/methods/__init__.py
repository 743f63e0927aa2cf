"""Training objectives built on the backbone interface: a backbone, its head(s) and a loss.

One module per method (`distill.py`: DeiT knowledge distillation, ...). Import the module you
need (`from vitkit.methods import distill`); the package itself imports only the light
pre-training interface (`base.py`), so importing one method never pays for another.
"""

# ---------------------------------------------------------------------------------------------
# Self-supervised pre-training methods (interface: base.py; loop: vitkit/train/pretrain.py).
# Registered by name with `register_method`; a method's module is imported only when the method
# is asked for (`create_method`, `list_methods`), so importing this package stays light.
from __future__ import annotations

import importlib
from collections.abc import Callable

from .base import PretrainMethod, feature_std  # noqa: F401  (re-exported)

METHODS: dict[str, Callable[..., PretrainMethod]] = {}
_METHOD_MODULES: dict[str, str] = {"mae": ".mae", "mpp": ".mpp", "dino": ".dino", "msn": ".msn"}


def register_method(name: str) -> Callable[[Callable[..., PretrainMethod]], Callable[..., PretrainMethod]]:
    """Decorator: register a factory `factory(backbone, **options) -> PretrainMethod` under `name`."""

    def wrap(factory: Callable[..., PretrainMethod]) -> Callable[..., PretrainMethod]:
        if name in METHODS and METHODS[name] is not factory:
            raise ValueError(f"pre-training method {name!r} is registered twice")
        METHODS[name] = factory
        return factory

    return wrap


def list_methods() -> list[str]:
    """Names of the registered pre-training methods (imports their modules)."""
    for module in _METHOD_MODULES.values():
        try:
            importlib.import_module(module, __name__)
        except ModuleNotFoundError as e:  # a method whose module is not written yet
            if e.name != __name__ + module:
                raise
    return sorted(METHODS)


def create_method(name: str, backbone, **options) -> PretrainMethod:
    """Build pre-training method `name` around `backbone`, e.g. `create_method("mae", vit, mask_ratio=0.75)`."""
    if name not in METHODS and name in _METHOD_MODULES:
        importlib.import_module(_METHOD_MODULES[name], __name__)
    if name not in METHODS:
        raise ValueError(f"unknown pre-training method {name!r}; known: {', '.join(list_methods())}")
    try:
        return METHODS[name](backbone, **options)
    except TypeError as e:  # an option the method does not take: name it, as a user error
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(
            f"pre-training method {name!r}: {e} (set method options as --method.options.NAME=VALUE; "
            f"see the method's docstring for its options)"
        ) from None
