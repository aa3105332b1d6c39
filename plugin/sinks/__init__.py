"""Frame sinks: the interface (`base`), the spec parser (`spec`) and one module per kind
(`null`, `vcam`, `video`, `images`, `preview`). Implementations import only `base`, never this package."""

from .base import FrameLimit, Sink, SinkError
from .null import NullSink
from .spec import make_sink

__all__ = ["FrameLimit", "NullSink", "Sink", "SinkError", "make_sink"]
