"""The model zoo: one small file per family, each registered for ``AutoModel``."""

__all__: list[str] = []
