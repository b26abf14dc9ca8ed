"""Name registries: noise kinds and schedules are added by name with a decorator."""

from typing import Any, Callable, TypeVar

C = TypeVar("C", bound=type)


def _registrar(registry: dict[str, Any]) -> Callable[[str], Callable[[C], C]]:
    """``register = _registrar(REGISTRY)``; ``@register("name")`` adds a class."""

    def register(name: str) -> Callable[[C], C]:
        def add(cls: C) -> C:
            cls.name = name
            registry[name] = cls
            return cls

        return add

    return register


def _make(registry: dict[str, Any], what: str, name: str, kwargs: dict) -> Any:
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; valid names: {valid}")
    return registry[name](**kwargs)
