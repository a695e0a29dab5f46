"""The cloud's job id (cloud/job.py): saved in the state folder, resumed by a restarted cloud, fresh for a new state
folder, named by ``[cloud] job_id``; and a version store kept across jobs serves only the job's own versions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cloud.config import CloudSection
from cloud.job import JOB_FILE, choose_job, new_job_id, saved_job
from cloud.store import VersionStore
from hffm_core.errors import ConfigError
from hffm_core.protocol import (
    GLOBAL_STAGE,
    ModuleKey,
    ModuleVersion,
    blobs_from_state,
    codec,
    tensors_sha256,
)

HEAD = ModuleKey.head("digit")


def test_a_new_state_folder_is_a_new_job_and_a_restart_resumes_it(tmp_path: Path) -> None:
    job, resumable = choose_job(tmp_path / "state")
    assert not resumable and re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", job)
    assert saved_job(tmp_path / "state") == job
    assert choose_job(tmp_path / "state") == (job, True)  # the restarted cloud: the same job
    assert choose_job(tmp_path / "state", job) == (job, True)  # named as it is saved: the same job
    other, resumable = choose_job(tmp_path / "other")
    assert other != job and not resumable
    assert new_job_id() != new_job_id()


def test_a_configured_job_id_names_the_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert choose_job(tmp_path, "nightly-7") == ("nightly-7", False)
    assert choose_job(tmp_path, "nightly-7") == ("nightly-7", True)
    assert choose_job(tmp_path, "nightly-8") == ("nightly-8", False)  # another id: that job, from scratch
    assert "is not the job 'nightly-7'" in caplog.text and saved_job(tmp_path) == "nightly-8"


@pytest.mark.parametrize("text", ["not json", '{"job": ""}', '{"job": "a b"}', "[]", '{"id": "x"}'])
def test_an_unreadable_job_file_refuses_to_guess(tmp_path: Path, text: str) -> None:
    (tmp_path / JOB_FILE).write_text(text)
    with pytest.raises(ConfigError, match="move it away to start a new job"):
        choose_job(tmp_path)


@pytest.mark.parametrize("bad", ["-x", "a/b", "x" * 65])
def test_a_bad_job_id_in_the_config_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="job id must be"):
        CloudSection(fleet="f", fogs=["fog-1"], modalities=["image"], tasks=["digit"], job_id=bad)


def _version(g: int, value: float, job: str) -> ModuleVersion:
    blobs = blobs_from_state({"w": np.full((2,), value, np.float32)})
    return ModuleVersion(fleet="f", sender="cloud", key=HEAD, global_round=g, stage=GLOBAL_STAGE, tensors=blobs,
                         sha256=tensors_sha256(blobs), job=job)


def test_the_store_serves_only_the_jobs_own_versions(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "cloud.sqlite")
    for g in range(4):
        store.put_version(_version(g, float(g), "J1"))
    store.put_version(_version(0, 10.0, "J2"))
    store.put_version(_version(1, 11.0, "J2"))  # replaces J1's version 1 in its row
    # A row written before job ids: schema 1 of ModuleVersion, which this build does not decode.
    legacy = codec.wire_map(codec.encode(_version(5, 5.0, "J1")), ModuleVersion)
    legacy["schema"] = 1
    del legacy["job"]
    store._db.execute("INSERT INTO module_versions VALUES (?, ?, ?, ?, 0)", (str(HEAD), 5, "x",
                                                                            codec.pack_raw(legacy)))
    assert store.latest_versions("J2")[HEAD].global_round == 1
    assert store.latest_versions("J1")[HEAD].global_round == 3
    assert store.latest_versions("J3") == {}
    store.close()
