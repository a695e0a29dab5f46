"""ONNX export of one task: adapter merged, parity with torch on real M3T-Bench digits, dynamic batch, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.export import export_task, merged_task_module, parity, run_onnx
from edge_runtime.export.onnx_export import TaskGraph
from hffm_core.errors import DataError, ModelError
from hffm_core.protocol.keys import ModuleKey
from hffm_lab.data import load_m3t_bench
from hffm_model import M3TModel, adapter_name, load_backbone
from hffm_model.training import train_task

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

IMAGE = (8, 8)  # M3T-Bench's image modality: 8x8 digits, one token per pixel row


def build() -> M3TModel:
    """Tiny backbone; two tasks on `image` (so another adapter sits on the same layers) and one on `power`."""
    return M3TModel(
        load_backbone("tiny"),
        modalities={"image": IMAGE, "power": (16, 8)},
        tasks={"digit": ("image", 10), "shape": ("image", 3), "demand": ("power", 2)},
    )


def randomise(model: M3TModel, seed: int) -> None:
    """Give every module (LoRA B included, which starts at zero) random non-zero values."""
    rng = np.random.default_rng(seed)
    for key in model.module_keys():
        state = model.get_module_state(key)
        model.load_module_state(key, {n: rng.normal(0.0, 0.2, v.shape).astype(np.float32) for n, v in state.items()})


@pytest.fixture(scope="module")
def digits():
    return load_m3t_bench(tasks=["digit"])["digit"]


@pytest.fixture(scope="module")
def model(digits) -> M3TModel:
    m = build()
    randomise(m, seed=1)
    train_task(m, modality="image", task="digit", x=digits.x_train[:256], y=digits.y_train[:256], epochs=1, lr=3e-3)
    return m


@pytest.fixture(scope="module")
def exported(model: M3TModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "nested" / "dir" / "digit.onnx"
    assert export_task(model, modality="image", task="digit", path=path) == path
    return path


def lora_weights(model: M3TModel, modality: str, task: str) -> dict[str, np.ndarray]:
    return model.get_module_state(ModuleKey.adapter(modality, task))


def test_adapters_are_non_zero_so_the_merge_matters(model: M3TModel) -> None:
    for modality, task in (("image", "digit"), ("image", "shape")):
        b = [v for n, v in lora_weights(model, modality, task).items() if n.endswith("lora_B.weight")]
        assert b and all(np.abs(v).max() > 0.01 for v in b)


def test_export_matches_torch_on_the_real_digit_test_split(model: M3TModel, exported: Path, digits) -> None:
    result = parity(model, modality="image", task="digit", path=exported, x=digits.x_test)
    assert set(result) == {"max_abs_diff", "argmax_agreement"}
    assert result["max_abs_diff"] < 1e-4
    assert result["argmax_agreement"] >= 0.999
    onnx.checker.check_model(str(exported))


def test_exported_file_has_named_input_and_output_with_a_dynamic_batch(exported: Path) -> None:
    proto = onnx.load(str(exported))
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "x" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == list(IMAGE)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[1].dim_value == 10


@pytest.mark.parametrize("rows", [1, 37])
def test_batch_size_is_dynamic(model: M3TModel, exported: Path, digits, rows: int) -> None:
    x = digits.x_test[:rows]
    logits = run_onnx(exported, x)
    assert logits.shape == (rows, 10) and logits.dtype == np.float32
    with torch.no_grad():
        expected = model(torch.from_numpy(x), modality="image", task="digit").numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # Small batches through run_onnx's own batching give the same logits.
    np.testing.assert_allclose(run_onnx(exported, x, batch_size=5), logits, atol=1e-6, rtol=0)


def test_exported_graph_has_no_lora_and_holds_the_merged_weights(model: M3TModel, exported: Path) -> None:
    proto = onnx.load(str(exported))
    names = [n.name for n in proto.graph.node] + [i.name for i in proto.graph.initializer]
    names += [n.op_type for n in proto.graph.node] + [f.name for f in proto.functions]
    assert not [n for n in names if "lora" in n.lower()]
    initializers = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer]
    layer = model.backbone_model.get_submodule("encoder.layer.0.attention.self.query")
    base = layer.get_base_layer().weight.detach().numpy()
    state = lora_weights(model, "image", "digit")
    a = state["encoder.layer.0.attention.self.query.lora_A.weight"]
    b = state["encoder.layer.0.attention.self.query.lora_B.weight"]
    merged = base + (model.lora_alpha / model.lora_r) * (b @ a)
    assert np.abs(merged - base).max() > 1e-3

    def held(w: np.ndarray) -> bool:  # the exporter may store W or its transpose (for MatMul)
        return any(i.shape == c.shape and np.allclose(i, c, atol=1e-6) for i in initializers for c in (w, w.T))

    assert held(merged)
    assert not held(base)


def test_merged_module_merges_only_the_pairs_adapter(model: M3TModel) -> None:
    graph = merged_task_module(model, modality="image", task="digit")
    assert isinstance(graph, TaskGraph) and not graph.training
    assert not [n for n, m in graph.named_modules() if type(m).__module__.startswith("peft")]
    assert all(not p.requires_grad for p in graph.parameters())
    scaling = model.lora_alpha / model.lora_r
    for name in ("encoder.layer.1.attention.self.value", "encoder.layer.0.attention.self.query"):
        live = model.backbone_model.get_submodule(name)
        base = live.get_base_layer().weight.detach()
        merged = graph.backbone.get_submodule(name).weight.detach()
        digit = live.lora_B[adapter_name("image", "digit")].weight @ live.lora_A[adapter_name("image", "digit")].weight
        torch.testing.assert_close(merged, base + scaling * digit.detach(), atol=1e-6, rtol=0)
    # The other adapters (shape on the same modality, demand on power) were not merged: digit still matches.
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(5, *IMAGE)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x, modality="image", task="digit"), atol=1e-5, rtol=0)


def test_export_leaves_the_live_model_untouched(tmp_path: Path, digits) -> None:
    m = build()
    randomise(m, seed=2)
    m.activate("image", "shape")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.from_numpy(digits.x_test[:16])
    with torch.no_grad():
        out_before = m(x, modality="image", task="shape").clone()
    export_task(m, modality="image", task="digit", path=tmp_path / "digit.onnx")
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(m(x, modality="image", task="shape"), out_before)
    assert m._active == adapter_name("image", "shape")  # export did not switch the live adapter
    assert any("lora_" in n for n, _ in m.backbone_model.named_parameters())


def test_another_task_exports_its_own_adapter_and_head(model: M3TModel, exported: Path, tmp_path: Path, digits) -> None:
    path = export_task(model, modality="image", task="shape", path=tmp_path / "shape.onnx")
    result = parity(model, modality="image", task="shape", path=path, x=digits.x_test[:64])
    assert result["max_abs_diff"] < 1e-4 and result["argmax_agreement"] >= 0.999
    assert run_onnx(path, digits.x_test[:4]).shape == (4, 3)
    with pytest.raises(ModelError, match="shape"):
        parity(model, modality="image", task="digit", path=path, x=digits.x_test[:4])


def test_export_logs_which_exporter_was_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = build()
    with caplog.at_level(logging.INFO, logger="edge_runtime.export"):
        export_task(m, modality="power", task="demand", path=tmp_path / "demand.onnx")
    assert "with the dynamo exporter" in caplog.text


def test_falls_back_to_the_torchscript_exporter_when_dynamo_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("dynamo unavailable in this test")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    m = build()
    randomise(m, seed=4)
    x = np.random.default_rng(5).normal(size=(37, 16, 8)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="edge_runtime.export"):
        path = export_task(m, modality="power", task="demand", path=tmp_path / "demand.onnx")
    assert "falling back to the TorchScript exporter" in caplog.text
    assert "with the torchscript exporter" in caplog.text
    assert parity(m, modality="power", task="demand", path=path, x=x)["max_abs_diff"] < 1e-4
    assert run_onnx(path, x[:1]).shape == (1, 2)


def test_export_failing_with_both_exporters_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("exporter broken")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ModelError, match="both exporters"):
        export_task(build(), modality="power", task="demand", path=tmp_path / "demand.onnx")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_export_refuses_an_unknown_task_or_the_wrong_modality(model: M3TModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown task 'nope'"):
        export_task(model, modality="image", task="nope", path=tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="runs on modality 'image', not 'power'"):
        export_task(model, modality="power", task="digit", path=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_run_onnx_rejects_a_wrong_input_shape(exported: Path) -> None:
    with pytest.raises(ModelError, match=r"has shape \(4, 8, 9\), expected \(batch, 8, 8\)"):
        run_onnx(exported, np.zeros((4, 8, 9), np.float32))
    with pytest.raises(ModelError, match=r"has shape \(8, 8\)"):
        run_onnx(exported, np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match="not numeric"):
        run_onnx(exported, np.full((2, 8, 8), "a"))
    with pytest.raises(ValueError, match="batch_size"):
        run_onnx(exported, np.zeros((2, 8, 8), np.float32), batch_size=0)


def test_run_onnx_accepts_other_dtypes_and_empty_input(exported: Path, digits) -> None:
    x = digits.x_test[:3]
    np.testing.assert_allclose(run_onnx(exported, x.astype(np.float64)), run_onnx(exported, x), atol=1e-6)
    assert run_onnx(exported, np.zeros((0, *IMAGE), np.float32)).shape == (0, 10)


def test_run_onnx_rejects_a_missing_or_invalid_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ModelError, match=r"missing\.onnx does not exist"):
        run_onnx(missing, np.zeros((1, *IMAGE), np.float32))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelError, match=r"garbage\.onnx cannot be loaded"):
        run_onnx(garbage, np.zeros((1, *IMAGE), np.float32))
    with pytest.raises(ModelError, match="does not exist"):
        run_onnx(tmp_path, np.zeros((1, *IMAGE), np.float32))
