"""Run a serialized TensorRT 10 engine as a torch callable (name-based I/O API).

Inputs are bound by name in engine order; the engine's outputs go into buffers preallocated
per input shape; execution is enqueued on torch's current CUDA stream, so the call composes
with surrounding torch work and can be captured inside the step's CUDA graph.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for name, torch_type in (("bfloat16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = torch_type
    return table[dtype]


class TrtModule:
    """`module(*inputs, **named) -> output` for an engine with one output, or the tuple of its
    outputs in `output_names` order for several (a ControlNet's residuals). `arg_names` gives the
    names of positional inputs in call order (default: the engine's input order); named inputs
    (the UNet's conditioning and residuals) bind by their own names."""

    def __init__(self, engine_path: Path, device: torch.device | str = "cuda",
                 arg_names: tuple[str, ...] | None = None, output_names: tuple[str, ...] | None = None) -> None:
        import tensorrt as trt

        self._trt = trt
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        if output_names is not None and set(output_names) != set(outputs):
            raise RuntimeError(f"expected the outputs {list(output_names)}, engine has {outputs}")
        self.output_names = list(output_names or outputs)
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.arg_names = tuple(arg_names or self.input_names)
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: list[torch.Tensor] = []
        self._shapes: tuple | None = None

    def _bind(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        for name, shape in zip(self.input_names, shapes):
            if not self.context.set_input_shape(name, shape):
                raise ValueError(f"input {name} of shape {shape} is outside the engine's optimisation profile")
            buf = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self._inputs[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())
        self._outputs = []
        for out in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise RuntimeError(f"output {out} shape {out_shape} unresolved after setting the input shapes")
            buf = torch.empty(out_shape, dtype=self.dtypes[out], device=self.device)
            self._outputs.append(buf)
            self.context.set_tensor_address(out, buf.data_ptr())
        self._shapes = shapes

    def __call__(self, *args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = dict(zip(self.arg_names, args), **named)
        if len(args) > len(self.arg_names) or set(feeds) != set(self.input_names):
            raise TypeError(f"engine takes {self.input_names}, got {len(args)} positional and {sorted(named)}")
        ordered = [feeds[name] for name in self.input_names]
        shapes = tuple(tuple(a.shape) for a in ordered)
        if shapes != self._shapes:
            self._bind(shapes)
        for name, arg in zip(self.input_names, ordered):
            self._inputs[name].copy_(arg)  # casts (e.g. timestep to float32) and makes it contiguous
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        outs = tuple(o.clone() for o in self._outputs)  # the caller may keep them; the engine reuses its buffers
        return outs[0] if len(outs) == 1 else outs
