"""Operator commands: config check, edge/fleet status, ONNX export and inference."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_runtime.config import DeviceConfig
from hffm_core.config import load_config, resolve
from hffm_core.errors import ConfigError, DataError, ModelError


def config_check(path: Path, *, check_files: bool, fmt: str) -> int:
    """Print the verdict on a config file; return the exit code (0 valid, ConfigError's code otherwise)."""
    from hffm_cli.config_check import check_config_file

    kind, problems = check_config_file(path, check_files=check_files)
    if fmt == "json":
        print(json.dumps({"file": str(path), "kind": kind, "valid": not problems, "problems": problems}))
    elif problems:
        print(f"hffm: error: {path}: {len(problems)} problem(s) in this {kind} config", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
    else:
        print(f"{path}: valid {kind} config")
    return ConfigError.exit_code if problems else 0


def status_path(cfg: DeviceConfig) -> Path:
    return resolve(cfg.base_dir, cfg.state_dir) / f"{cfg.device.id}-status.json"


def modules_path(cfg: DeviceConfig) -> Path:
    return resolve(cfg.base_dir, cfg.state_dir) / f"{cfg.device.id}-modules.npz"


def edge_status(config: Path, *, fmt: str) -> None:
    """Print the status the agent of ``config`` last wrote.

    Raises:
        ConfigError: bad config. DataError: no status file (the agent never ran with this state_dir) or a bad one.
    """
    cfg = load_config(config, DeviceConfig)
    path = status_path(cfg)
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no status at {path}: the agent of {cfg.device.id!r} has not run with this state_dir") \
            from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable status file {path}: {exc}") from None
    status["age_s"] = round(time.time() - float(status.get("updated_at", 0)), 1)
    _check_process(status)
    if fmt == "json":
        print(json.dumps(status, indent=1))
        return
    console = Console()
    table = Table(title=f"device {status.get('device')} (fog {status.get('fog')}, updated {status['age_s']} s ago)")
    table.add_column("field")
    table.add_column("value")
    for key in ("state", "process", "reason", "job", "link", "last_round", "decision", "outbox"):
        table.add_row(key, json.dumps(status.get(key)))
    table.add_row("resources", ", ".join(f"{k}={v:.1f}" for k, v in status.get("resources", {}).items()))
    for module, stamp in sorted(status.get("modules", {}).items()):
        table.add_row(module, f"version {stamp}")
    console.print(table)


def _process_alive(pid: object, since: float) -> bool:
    """Whether process ``pid`` runs and started before ``since`` (the status file's time), i.e. is not a later
    process that reuses the number."""
    import psutil

    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).create_time() <= since + 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def _check_process(status: dict[str, Any]) -> None:
    """Add ``process`` (whether the agent that wrote the file still runs) and never report a link as connected for
    an agent that is gone or ended on an error: the file keeps the last state the agent wrote."""
    pid = status.get("pid")
    alive = _process_alive(pid, float(status.get("updated_at", 0) or 0))
    status["process"] = f"running (pid {pid})" if alive else f"not running (pid {pid} is gone)"
    link = status.get("link") if isinstance(status.get("link"), dict) else {}
    if not alive or str(status.get("state", "")) in ("crashed", "stale"):
        status["link"] = {**link, "connected": False}


def fleet_status(host: str, port: int, fleet: str, *, timeout_s: float, fmt: str) -> None:
    from hffm_cli.fleet_status import fleet_rows, print_fleet, read_fleet

    rows = fleet_rows(read_fleet(host, port, fleet, timeout_s=timeout_s))
    if fmt == "json":
        print(json.dumps({"fleet": fleet, "broker": f"{host}:{port}", "nodes": rows}, indent=1))
    else:
        print_fleet(rows, Console())


def edge_export(config: Path, *, task: str, out: Path, modules: Path | None, source: str = "local"
                ) -> dict[str, Any]:
    """Export the device's model for ``task`` to ONNX and check parity: ``source`` "local" = its modules as it
    last trained them, "fleet" (``--model global``) = the versions it last received from its fog, "personal"
    (``--model personal``) = its personal modules ([personalization], docs/personalization.md).

    Raises:
        ConfigError: the device does not run ``task``. DataError: no module snapshot yet. ModelError: export failed.
    """
    from edge_runtime.export import export_task, parity
    from edge_runtime.local_data import load_local_data
    from hffm_model.factory import build_m3t
    from hffm_model.snapshot import load_modules

    cfg = load_config(config, DeviceConfig)
    if task not in cfg.device.tasks:
        raise ConfigError(f"device {cfg.device.id!r} does not run task {task!r}; it runs {cfg.device.tasks}")
    if source not in ("local", "fleet", "personal"):
        raise ConfigError(f"unknown source {source!r}; expected 'local', 'fleet' or 'personal'")
    default = modules_path(cfg)
    if source == "local":
        default = default.with_name(f"{cfg.device.id}-local-modules.npz")
    elif source == "personal":
        from edge_runtime.personal_device import personal_path

        if cfg.personalization.mode == "none" and modules is None:
            raise ConfigError(f"device {cfg.device.id!r} keeps no personal modules ([personalization] mode is "
                              "'none'); export --model global")
        default = personal_path(resolve(cfg.base_dir, cfg.state_dir), cfg.device.id)
    states, stamps = load_modules(modules or default)
    model = build_m3t(cfg.model, cfg.device.modalities, cfg.device.tasks)
    for key, state in states.items():
        if key in model.module_keys():
            model.load_module_state(key, state)
    data = load_local_data(cfg)
    modality = data.modality_of[task]
    started = time.monotonic()
    path = export_task(model, modality=modality, task=task, path=out)
    x, _y = data.test.get(task, data.train[task])
    check = parity(model, modality=modality, task=task, path=path, x=x)
    result = {"onnx": str(path), "task": task, "modality": modality, "source": source,
              "bytes": path.stat().st_size,
              "export_s": round(time.monotonic() - started, 2), "parity_rows": int(len(x)), **check,
              "versions": {str(k): list(v) for k, v in stamps.items() if k.task in (task, "_")
                           and k.modality in (modality, "_")}}
    if check["argmax_agreement"] < 0.999:
        raise ModelError(f"ONNX export of {task!r} disagrees with torch: {check}")
    return result


def load_inputs(path: Path) -> tuple[Any, Any]:
    """``x`` (and ``y`` when the file is a labelled task file) from an .npz; an unlabelled file holds only ``x``.

    Raises:
        DataError: not a readable .npz, no ``x``, or ``x`` not a finite 3-d float array.
    """
    import zipfile

    import numpy as np

    from hffm_model.files import load_task_file

    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            x = arrays["x"] if "x" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "y" in keys:
        return load_task_file(path)
    if x is None:
        raise DataError(f"{path}: no 'x' array (found {sorted(keys)})")
    if x.ndim != 3 or x.dtype.kind != "f" or not np.isfinite(x).all():
        raise DataError(f"{path}: 'x' must be a finite float array (N, n_tokens, token_dim), got {x.dtype} "
                        f"{x.shape}")
    return x.astype(np.float32), None


def edge_infer(model_path: Path, input_path: Path, *, fmt: str, labels: bool) -> None:
    """Run an exported model on an .npz of inputs; print predictions, and accuracy when the file has labels."""
    import numpy as np

    from edge_runtime.export import run_onnx

    x, y = load_inputs(input_path)
    pred = run_onnx(model_path, x).argmax(axis=1)
    out: dict[str, Any] = {"model": str(model_path), "input": str(input_path), "rows": int(len(x)),
                           "predictions": pred.tolist() if labels or y is None else None,
                           "accuracy": float(np.mean(pred == y)) if y is not None else None}
    if fmt == "json":
        print(json.dumps(out))
    elif y is None:
        print(f"{len(x)} rows -> predictions: {pred.tolist()}")
    else:
        print(f"{len(x)} rows -> predictions; accuracy against the file's labels: {out['accuracy']:.4f}")
