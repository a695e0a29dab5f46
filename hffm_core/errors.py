"""One error family for hffm. Every error carries the exit code the CLI ends with.

The CLI catches :class:`HffmError` once and prints one line; anything else is a bug and keeps its traceback.
The family is declared from one table below (name, exit code, help); :func:`error_class` makes each class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class HffmError(Exception):
    """Base of every error hffm raises on purpose."""

    exit_code: ClassVar[int] = 1
    help: ClassVar[str] = "an hffm error"


def error_class(name: str, base: type[HffmError] = HffmError, *, exit_code: int | None = None,
                help: str | None = None, doc: str | None = None, module: str = __name__, **attrs: Any) -> Any:
    """A subclass of ``base`` called ``name``, as if declared with ``class`` in ``module`` (so it pickles and
    prints under that name). ``exit_code`` and ``help`` default to the base's; the docstring defaults to ``help``.
    Further keyword arguments become class attributes (e.g. a :class:`SecurityError`'s ``reason``). Raises nothing.
    """
    body: dict[str, Any] = {"__module__": module, "__qualname__": name, **attrs}
    if exit_code is not None:
        body["exit_code"] = exit_code
    if help is not None:
        body["help"] = help
    body["__doc__"] = doc or help or base.__doc__
    return type(name, (base,), body)


ConfigError = error_class("ConfigError", exit_code=2, help="a config file or a command-line option is invalid")
TopologyError = error_class(
    "TopologyError", ConfigError, help="a topology file is invalid",
    doc="""A topology file (or a topology built in code) is invalid. A ConfigError: it shares exit code 2, so it is not
    listed in :data:`ALL_ERRORS`, which holds one class per exit code.""")
DecodeError = error_class("DecodeError", exit_code=3,
                          help="a payload or file could not be decoded into the expected message type")
TransportError = error_class("TransportError", exit_code=4,
                             help="an MQTT broker could not be reached or refused an operation")
AggregationError = error_class("AggregationError", exit_code=5,
                               help="updates could not be aggregated (shape or key mismatch, no weight)")
DataError = error_class("DataError", exit_code=6, help="a data set or data file is missing or malformed")
ModelError = error_class("ModelError", exit_code=7, help="a backbone or module could not be built, loaded or matched")
BrokerError = error_class("BrokerError", exit_code=8,
                          help="a local mosquitto broker could not be rendered, started or stopped")
RoundTimeoutError = error_class("RoundTimeoutError", exit_code=9,
                                help="a federated job did not finish within its time limit")
SecurityError = error_class(
    "SecurityError", exit_code=10, reason="security",
    help="a message failed a security check (unsigned, bad signature, replayed, wrong sender, unknown or revoked key)",
    doc="A message failed a security check. ``reason`` is the short name it is counted under (e.g. ``replayed``).")
StorageError = error_class(
    "StorageError", exit_code=11,
    help="a state folder or file could not be written or read (disk full, read-only, permissions)")
InternalError = error_class("InternalError", exit_code=12,
                            help="an unexpected internal error (a bug: the log has the traceback)")
StaleModelError = error_class(
    "StaleModelError", exit_code=13,
    help="a device ended its job without the final global model (it evaluated older modules)")


def storage_error(exc: OSError, what: str = "") -> StorageError:
    """A :class:`StorageError` that names the cause of ``exc`` in words (disk full, read-only file system, ...)."""
    import errno

    causes = {errno.ENOSPC: "no space left on the device (disk full)", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EDQUOT: "disk quota exceeded"}
    cause = causes.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
    return StorageError(f"{what + ': ' if what else ''}cannot write{where}: {cause}")


def check_table_keys(table: Any, where: str, problems: list[str], *, allowed: Sequence[str],
                     required: Sequence[str] = ()) -> bool:
    """Check a config table's keys, appending each problem (naming ``where``) to ``problems``: keys not in
    ``allowed`` (listed in the message in ``allowed``'s order) and keys of ``required`` that are absent.

    Returns False when ``table`` is not a table at all (then nothing else about it can be checked). Raises nothing.
    """
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table, got {type(table).__name__}")
        return False
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; expected some of {list(allowed)}")
    missing = [k for k in required if k not in table]
    if missing:
        problems.append(f"{where}: missing key(s) {missing}")
    return True


ALL_ERRORS: tuple[type[HffmError], ...] = (
    HffmError,
    ConfigError,
    DecodeError,
    TransportError,
    AggregationError,
    DataError,
    ModelError,
    BrokerError,
    RoundTimeoutError,
    SecurityError,
    StorageError,
    InternalError,
    StaleModelError,
)
