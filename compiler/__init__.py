"""ONNX -> crossbar ISA compiler. ``compile_model`` is the entry point."""

from .context import CompileContext
from .driver import compile_model
from .errors import CompileError

__all__ = ["compile_model", "CompileContext", "CompileError"]
