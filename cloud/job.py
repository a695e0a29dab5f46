"""The cloud's job id: named in every round announcement, module version and advert of a job, so that fogs and
devices tell a job apart from an earlier one whose retained messages the brokers still hold (docs/reliability.md,
"Jobs").

The id lives in ``{state_dir}/cloud-job.json``, written before the first announcement: a restarted cloud resumes the
job of its state folder, and a new state folder starts a new job. ``[cloud] job_id`` names the job instead of a
generated id; naming another id than the state folder's starts that job from scratch.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path

from hffm_core.atomic import write_json
from hffm_core.errors import ConfigError
from hffm_core.protocol import check_job_id

log = logging.getLogger(__name__)
JOB_FILE = "cloud-job.json"


def new_job_id() -> str:
    """A fresh id: the UTC start time and 24 random bits, e.g. ``20261206T101500-9f3a1c``."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def saved_job(state_dir: Path) -> str | None:
    """The job id saved in ``state_dir`` (None when there is none).

    Raises:
        ConfigError: the file is unreadable or holds no valid id (refusing to guess which job this is).
    """
    path = state_dir / JOB_FILE
    if not path.exists():
        return None
    try:
        job = json.loads(path.read_text())["job"]
        check_job_id(job, allow_empty=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cloud job file {str(path)!r} is unreadable ({exc}); move it away to start a new job") \
            from None
    return str(job)


def choose_job(state_dir: Path, configured: str = "") -> tuple[str, bool]:
    """The job this cloud runs, and whether it is the job its ``state_dir`` holds (whose saved round it resumes).

    The saved job, unless ``configured`` names another; else ``configured`` or a fresh id, saved before returning.

    Raises:
        ConfigError: an unreadable job file.
        OSError: the job file cannot be written.
    """
    saved = saved_job(state_dir)
    if saved is not None and configured in ("", saved):
        return saved, True
    job = configured or new_job_id()
    if saved is not None:
        log.warning("cloud: [cloud] job_id %r is not the job %r of %s; starting job %r from scratch", configured,
                    saved, state_dir, job)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json(state_dir / JOB_FILE, {"job": job})
    return job, False
