"""Frame sources: the interface (`base`), the spec parser (`spec`) and one module per kind
(`pattern`, `screen`, `camera`, `video`). Implementations import only `base`, never this package."""

from .base import Pacer, Source, SourceError
from .spec import make_source

__all__ = ["Pacer", "Source", "SourceError", "make_source"]
