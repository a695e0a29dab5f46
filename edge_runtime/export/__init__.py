"""Export one task of an M3T model to ONNX (LoRA adapter merged) and run it with onnxruntime.

Needs the ``edge`` and ``export`` extras (torch, peft, onnx, onnxscript, onnxruntime); onnx and onnxruntime are
imported only when a function that needs them is called.
"""

from edge_runtime.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_task,
    merged_task_module,
)
from edge_runtime.export.onnx_infer import load_session, parity, run_onnx

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_task", "load_session", "merged_task_module", "parity", "run_onnx"]
