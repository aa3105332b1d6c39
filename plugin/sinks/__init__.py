"""Frame sinks: the interface (`base`), the spec parser (`spec`) and one module per kind
(`null`, `vcam`, `video`, `images`, `preview`), and the failure policy (`guard`). Implementations
import only `base`, never this package."""

from .base import FrameLimit, Sink, SinkError, SinkFailed
from .null import NullSink
from .spec import make_sink

__all__ = ["FrameLimit", "NullSink", "Sink", "SinkError", "SinkFailed", "make_sink"]
