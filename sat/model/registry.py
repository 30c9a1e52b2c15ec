"""The class registry behind ``AutoModel``: ``model_config.json`` names a class, the registry
finds it. Every ``BaseModel`` subclass registers itself by class name when it is defined."""

from __future__ import annotations

from sat.helpers import print_rank0


class Registry:
    """A name -> class table."""

    def __init__(self, name: str):
        self.name = name
        self.member: dict[str, type] = {}

    def register(self, cls):
        """Register ``cls`` under its ``__name__``; ``register("name")`` returns a decorator."""
        if isinstance(cls, str):
            alias = cls

            def decorator(target):
                self._add(alias, target)
                return target

            return decorator
        self._add(cls.__name__, cls)
        return cls

    def _add(self, name: str, cls: type) -> None:
        previous = self.member.get(name)
        if previous is not None and previous is not cls:
            print_rank0(
                f"{self.name}: {name} from {cls.__module__} replaces the one from {previous.__module__}",
                level="DEBUG",
            )
        self.member[name] = cls

    def unregister(self, name: str) -> None:
        self.member.pop(name, None)

    def get(self, name: str) -> type:
        """The class registered as ``name``; a ValueError lists what is registered otherwise."""
        if name not in self.member:
            known = ", ".join(sorted(self.member)) or "none"
            raise ValueError(
                f"model_class {name!r} is not registered in {self.name}. Registered: {known}. "
                f"Import the module that defines {name} before loading, or pass its class directly."
            )
        return self.member[name]

    def __contains__(self, name: str) -> bool:
        return name in self.member

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {sorted(self.member)})"


model_registry = Registry("sat_models")


class MetaModel(type):
    """Metaclass of ``BaseModel``: registers every subclass under its class name."""

    def __new__(mcs, clsname, bases, attrs, **kwargs):
        cls = super().__new__(mcs, clsname, bases, attrs, **kwargs)
        model_registry.register(cls)
        return cls

    def __setattr__(cls, name, value):
        if name == "__name__":
            model_registry.unregister(cls.__name__)
        super().__setattr__(name, value)
        if name == "__name__":
            model_registry.register(cls)
