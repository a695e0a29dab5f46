"""The fog's round journal: what is written reads back bit for bit, each step is whole after a kill -9, nothing is
unpickled, a bad file is a named error, and the rule that tells a resumed job from a new one."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fog_gateway.round_journal import (
    FORMAT,
    Position,
    RoundJournal,
    RoundJournalError,
    RoundJournalFormatError,
    RoundSum,
    StoredDelta,
    job_of,
    pack_state,
    same_job,
    staleness_weight,
    unpack_state,
)
from hffm_core.delivery import Outbox
from hffm_core.protocol import ModuleKey, RoundControl

HEAD, ENC = ModuleKey.head("digit"), ModuleKey.encoder("image")
PLAN = RoundControl(fleet="f", sender="cloud", global_round=2, cluster_round=0, total_rounds=5, agg_every=3,
                    local_epochs=1, deadline_s=30.0)


def _position(c: int = 1, *, in_round: bool = True) -> Position:
    return Position(round_g=2, cluster_c=c, in_round=in_round, modules=[ENC, HEAD],
                    participants={HEAD: {"a", "b"}, ENC: {"a"}}, previous={HEAD: {"b"}},
                    round_weight={HEAD: {"a": 10, "b": 30}, ENC: {}}, round_updated={HEAD}, sent_last={ENC},
                    plan=PLAN)


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32),
            "empty": np.zeros((0, 2), np.float32)}


def _delta(key: str, sender: str, module: ModuleKey = HEAD, *, lag: int = 0, seed: int = 0) -> StoredDelta:
    return StoredDelta(key=key, module=module, sender=sender, num_samples=7, lag=lag,
                       weight=staleness_weight(7, 0.5, lag), delta=_state(seed))


def _begin(journal: RoundJournal) -> None:
    states = {role: {HEAD: _state(i), ENC: _state(10 + i)} for i, role in enumerate(("start", "true", "published"))}
    journal.advance(_position(), states, {HEAD: (2, 0), ENC: (1, 3)}, job=job_of("f", "fog-1", PLAN))


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, arr in a.items():
        assert arr.dtype == b[name].dtype and arr.shape == b[name].shape and arr.tobytes() == b[name].tobytes()


def test_round_trip(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path / "r.sqlite")
    assert journal.load() is None
    _begin(journal)
    journal.add(_delta("k1", "a"), global_round=2, cluster_round=1)
    journal.add(_delta("k2", "b", lag=1, seed=5), global_round=2, cluster_round=1)
    journal.mark_announced()
    journal.close()

    snap = RoundJournal(tmp_path / "r.sqlite").load()
    assert snap is not None and snap.announced and snap.job == job_of("f", "fog-1", PLAN)
    assert snap.position == _position() and snap.position.plan == PLAN
    for i, role in enumerate(("start", "true", "published")):
        _same(snap.states[role][HEAD], _state(i))
        _same(snap.states[role][ENC], _state(10 + i))
    assert snap.stamps == {HEAD: (2, 0), ENC: (1, 3)}
    assert [(d.key, d.sender, d.lag, d.weight, d.num_samples) for d in snap.deltas] == [
        ("k1", "a", 0, 7.0, 7), ("k2", "b", 1, 3.5, 7)]
    _same(snap.deltas[1].delta, _state(5))
    assert snap.applied == ["k1", "k2"]


def test_float64_arrays_round_trip_and_other_dtypes_are_refused() -> None:
    state = {"sum": np.linspace(0, 1, 7, dtype=np.float64), "be": np.arange(3, dtype=">f4")}
    back = unpack_state(*pack_state(state))
    assert back["sum"].dtype == np.float64 and back["sum"].tobytes() == state["sum"].tobytes()
    assert back["be"].dtype == np.float32 and list(back["be"]) == [0.0, 1.0, 2.0]
    with pytest.raises(RoundJournalError, match="int64"):
        pack_state({"i": np.arange(3)})
    layout, blob = pack_state({"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="bytes"):
        unpack_state(layout, blob + b"\0")
    with pytest.raises(ValueError, match="bad layout"):
        unpack_state('[["w", [3], "|O"]]', blob)


def test_closing_a_round_drops_its_deltas_and_bounds_the_applied_keys(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path / "r.sqlite", kept=3)
    _begin(journal)
    for i in range(5):
        journal.add(_delta(f"k{i}", f"d{i}"), global_round=2, cluster_round=1)
    journal.advance(_position(2), {"true": {HEAD: _state(99)}, "published": {HEAD: _state(98)}}, {HEAD: (2, 1)})
    snap = journal.load()
    assert snap is not None and snap.deltas == [] and not snap.announced
    assert snap.position.cluster_c == 2 and snap.stamps[HEAD] == (2, 1)
    _same(snap.states["true"][HEAD], _state(99))
    _same(snap.states["start"][HEAD], _state(0))  # the start of the global round stays
    assert snap.applied == ["k2", "k3", "k4"]


def test_reset_forgets_the_job(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path / "r.sqlite")
    _begin(journal)
    journal.add(_delta("k1", "a"), global_round=2, cluster_round=1)
    journal.reset()
    assert journal.load() is None
    journal.close()
    assert RoundJournal(tmp_path / "r.sqlite").load() is None


def test_nothing_is_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the journal must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    journal = RoundJournal(tmp_path / "r.sqlite")
    _begin(journal)
    journal.add(_delta("k1", "a"), global_round=2, cluster_round=1)
    snap = RoundJournal(tmp_path / "r.sqlite").load()
    assert snap is not None and len(snap.deltas) == 1
    with sqlite3.connect(tmp_path / "r.sqlite") as db:  # the blobs are the arrays' raw bytes, nothing else
        layout, blob = db.execute("SELECT layout, data FROM deltas").fetchone()
    assert blob == b"".join(np.ascontiguousarray(_state(0)[n], "<f4").tobytes() for n in sorted(_state(0)))
    assert layout.startswith("[[") and b"\x80\x04" not in blob[:2]


def test_a_corrupt_or_foreign_file_is_a_named_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(RoundJournalError, match="cannot open the fog round journal .*move it away"):
        RoundJournal(garbage)

    Outbox(tmp_path / "outbox.sqlite").close()
    with pytest.raises(RoundJournalError, match="is not a fog round journal"):
        RoundJournal(tmp_path / "outbox.sqlite")

    path = tmp_path / "r.sqlite"
    journal = RoundJournal(path)
    _begin(journal)
    journal.add(_delta("k1", "a"), global_round=2, cluster_round=1)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE deltas SET layout = '[[\"w\", [3], \"|O\"]]'")
    with pytest.raises(RoundJournalError, match="unreadable.*move it away"):
        journal.load()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '{\"global_round\": 1' WHERE name = 'position'")
    with pytest.raises(RoundJournalError, match="unreadable"):
        journal.load()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'hffm-fog-round/999' WHERE name = 'format'")
    with pytest.raises(RoundJournalError, match="has format 'hffm-fog-round/999'"):
        RoundJournal(path)
    assert RoundJournalError.exit_code == 1 and RoundJournalError.help


def test_a_delta_outside_the_open_round_is_refused_on_load(tmp_path: Path) -> None:
    journal = RoundJournal(tmp_path / "r.sqlite")
    _begin(journal)
    journal.add(_delta("k1", "a"), global_round=2, cluster_round=2)  # the position says (2, 1)
    with pytest.raises(RoundJournalError, match="outside the open round"):
        journal.load()


@pytest.mark.parametrize(("plan_round", "shape", "same"), [
    (2, {}, True),  # the journal's round: the same job
    (3, {}, True),  # the cloud moved on while this fog was away
    (1, {}, False),  # a job's plan never goes back: a new job
    (2, {"total_rounds": 6}, False),
    (2, {"agg_every": 2}, False),
    (2, {"local_epochs": 2}, False),
])
def test_same_job_rule(plan_round: int, shape: dict[str, object], same: bool) -> None:
    job = job_of("f", "fog-1", PLAN)
    fields = {"fleet": "f", "sender": "cloud", "global_round": plan_round, "cluster_round": 0, "total_rounds": 5,
              "agg_every": 3, "local_epochs": 1, "deadline_s": 99.0, **shape}
    assert same_job(job, 2, fleet="f", fog="fog-1", plan=RoundControl(**fields)) is same  # type: ignore[arg-type]
    assert not same_job(job, 2, fleet="f", fog="fog-2", plan=PLAN)
    assert not same_job(job, 2, fleet="g", fog="fog-1", plan=PLAN)


_WRITER = """
import sys, numpy as np
from hffm_core.protocol import ModuleKey, RoundControl
from fog_gateway.round_journal import Position, RoundJournal, StoredDelta
HEAD = ModuleKey.head("digit")
plan = RoundControl(fleet="f", sender="cloud", global_round=1, cluster_round=0, total_rounds=1, agg_every=100000,
                    local_epochs=1, deadline_s=1.0)
j = RoundJournal(sys.argv[1], kept=1000000, synchronous="NORMAL")
def pos(c):
    return Position(round_g=1, cluster_c=c, in_round=True, modules=[HEAD], participants={HEAD: {"a", "b", "c"}},
                    plan=plan)
def states(c):
    return {r: {HEAD: {"w": np.full(256, float(c - 1), np.float32)}} for r in ("start", "true", "published")}
j.advance(pos(1), states(1), {HEAD: (1, 0)}, job={"fleet": "f"})
print("ready", flush=True)
for c in range(1, 100000):
    for d in "abc":
        j.add(StoredDelta(key=f"{c}/{d}", module=HEAD, sender=d, num_samples=1, weight=1.0, lag=0,
                          delta={"w": np.full(256, float(c), np.float32)}), global_round=1, cluster_round=c)
    j.advance(pos(c + 1), {r: s for r, s in states(c + 1).items() if r != "start"}, {HEAD: (1, c)})
"""


def test_kill9_at_any_instant_leaves_whole_steps(tmp_path: Path) -> None:
    """A writer adds three deltas per cluster round and closes it, over and over, until it is killed. Whatever the
    instant, the file holds whole steps: the round position matches the cluster state, every stored delta belongs
    to the open round and has its key, and every earlier round's keys are all there."""
    for wait in (0.6, 1.3):
        path = tmp_path / f"r{wait}.sqlite"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(wait)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        journal = RoundJournal(path)
        snap = journal.load()
        journal.close()
        assert snap is not None
        c = snap.position.cluster_c
        assert c > 1, "the writer closed no round before the kill"
        assert np.all(snap.states["true"][HEAD]["w"] == c - 1) and snap.stamps[HEAD] == (1, c - 1)
        assert [d.key for d in snap.deltas] == [f"{c}/{d}" for d in "abc"[:len(snap.deltas)]]
        assert all(np.all(d.delta["w"] == c) for d in snap.deltas)
        assert snap.applied == [f"{r}/{d}" for r in range(1, c) for d in "abc"] + [d.key for d in snap.deltas]


def test_a_fedavg_round_journals_its_running_sum_not_the_deltas(tmp_path: Path) -> None:
    """A batch commits its updates' rows (no arrays), their keys and the module's float64 sum together; the sum reads
    back bit for bit, and a sum that does not count the round's updates is refused on load."""
    journal = RoundJournal(tmp_path / "r.sqlite")
    _begin(journal)
    total = {"w": np.linspace(-1, 1, 12, dtype=np.float64).reshape(3, 4) / 3.0}
    bare = [StoredDelta(key=f"k{i}", module=HEAD, sender=d, num_samples=7, weight=7.0, lag=0, delta={},
                        digest=b"h%d" % i) for i, d in enumerate("ab")]
    journal.add_batch(bare, global_round=2, cluster_round=1, sums={HEAD: RoundSum(sums=total, weight=14.0, count=2)})
    snap = journal.load()
    assert snap is not None and [d.key for d in snap.deltas] == ["k0", "k1"] and all(not d.delta for d in snap.deltas)
    assert snap.sums[HEAD].count == 2 and snap.sums[HEAD].weight == 14.0
    _same(snap.sums[HEAD].sums, total)
    assert snap.applied == ["k0", "k1"] and snap.digests == {"k0": b"h0", "k1": b"h1"}
    size = journal._db.execute("SELECT SUM(LENGTH(data)) FROM sums").fetchone()[0]
    assert size == 12 * 8 and journal._db.execute("SELECT COUNT(data) FROM deltas").fetchone()[0] == 0
    journal.add_batch([StoredDelta(key="k2", module=HEAD, sender="c", num_samples=7, weight=7.0, lag=0, delta={})],
                      global_round=2, cluster_round=1)  # its sum was not written with it
    with pytest.raises(RoundJournalError, match="counts 2 update"):
        journal.load()
    journal.advance(_position(2), {"true": {HEAD: _state(99)}, "published": {HEAD: _state(98)}}, {HEAD: (2, 1)})
    snap = journal.load()
    assert snap is not None and snap.sums == {} and snap.deltas == []


def test_a_journal_of_the_previous_format_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    RoundJournal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'hffm-fog-round/2' WHERE name = 'format'")
    with pytest.raises(RoundJournalFormatError, match="has format 'hffm-fog-round/2', not 'hffm-fog-round/3'.*move"):
        RoundJournal(path)
    assert issubclass(RoundJournalFormatError, RoundJournalError) and FORMAT == "hffm-fog-round/3"
