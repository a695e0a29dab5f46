"""``hffm config check FILE``: validate a device, fog or cloud config and name every problem, without torch.

The kind is taken from the file's top-level table (``[device]``, ``[fog]`` or ``[cloud]``). Beyond the schema
(unknown, missing and mistyped keys, invalid values), it checks what a tier would refuse at start: unknown
modalities and tasks, tasks without data, unknown codecs or codec parameters, an unknown aggregator, and, with
``check_files``, that every data and evaluation file exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from edge_runtime.config import DeviceConfig
from fog_gateway.config import FogConfig
from hffm_core.config import collect, make_codecs, read_toml, resolve
from hffm_core.errors import ConfigError

KINDS: dict[str, type] = {"device": DeviceConfig, "fog": FogConfig, "cloud": CloudConfig}


def check_config_file(path: Path, *, check_files: bool = False) -> tuple[str, list[str]]:
    """Return the config's kind and every problem found (empty when the config is valid)."""
    try:
        table = read_toml(path)
    except ConfigError as exc:
        return "unknown", [str(exc)]
    kinds = [k for k in KINDS if k in table]
    if len(kinds) != 1:
        return "unknown", [f"{path}: expected exactly one of the tables {sorted(KINDS)}, found {kinds or 'none'}"]
    kind = kinds[0]
    table.setdefault("base_dir", str(path.resolve().parent))
    problems: list[str] = []
    cfg = collect(KINDS[kind], table, str(path), problems)
    if not problems:
        _semantic(kind, cfg, str(path), problems, check_files)
    return kind, problems


def _guard(problems: list[str], where: str, check: Any, *args: Any) -> None:
    try:
        check(*args)
    except ConfigError as exc:
        problems.extend(f"{where}: {line}" for line in str(exc).splitlines())


def _semantic(kind: str, cfg: Any, where: str, problems: list[str], check_files: bool) -> None:
    from hffm_model.factory import check_modalities_tasks

    if kind == "device":
        dev = cfg.device
        _guard(problems, where, check_modalities_tasks, dev.modalities, dev.tasks)
        for task in sorted(set(dev.tasks) - set(cfg.data)):
            problems.append(f"{where}: task {task!r} has no [data.{task}] table with a train file")
        for task in sorted(set(cfg.data) - set(dev.tasks)):
            problems.append(f"{where}: [data.{task}] is for a task the device does not run")
        _guard(problems, where, make_codecs, cfg.uplink, "uplink")
        files = [(f"data.{t}.train", e.train) for t, e in cfg.data.items()]
        files += [(f"data.{t}.test", e.test) for t, e in cfg.data.items() if e.test]
    elif kind == "fog":
        from hffm_core.aggregation import make_aggregator

        _guard(problems, where, make_aggregator, cfg.fog.aggregator, cfg.fog.aggregator_params)
        _guard(problems, where, make_codecs, cfg.uplink, "uplink")
        _guard(problems, where, make_codecs, cfg.downlink, "downlink")
        files = []
    else:
        c = cfg.cloud
        _guard(problems, where, check_modalities_tasks, c.modalities, c.tasks)
        for task in sorted(set(cfg.eval) - set(c.tasks)):
            problems.append(f"{where}: [eval] names task {task!r}, which is not in cloud.tasks")
        _guard(problems, where, make_codecs, cfg.downlink, "downlink")
        from hffm_core.aggregation import make_aggregator

        _guard(problems, where, make_aggregator, c.aggregator, c.aggregator_params)
        files = [(f"eval.{t}", p) for t, p in cfg.eval.items()]
    if check_files:
        for key, rel in files:
            if not resolve(cfg.base_dir, rel).is_file():
                problems.append(f"{where}: {key}: file {rel!r} does not exist")
