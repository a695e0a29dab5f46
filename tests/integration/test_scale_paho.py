"""The plain-MQTT columns of ``hffm bench scale`` on a real Mosquitto: the naive federated round (the model fanned
out to every client, then each client's updates up) and its upload-only variant both complete with every message,
and carrying the model down costs more than sending only ``go``."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_config.process import MosquittoProcess
from hffm_lab.bench.scale_paho import naive_rounds

pytestmark = pytest.mark.integration


def test_naive_rounds_with_and_without_the_model_complete(tmp_path: Path) -> None:
    with MosquittoProcess(name="naive", role="cloud", data_dir=tmp_path / "broker") as broker:
        broker.start()
        common = {"clients": 6, "msgs": 3, "size": 200_000, "rounds": 3}
        full = naive_rounds(broker.port, work=tmp_path / "full", down=3, **common)
        upload = naive_rounds(broker.port, work=tmp_path / "upload", **common)
    for got in (full, upload):
        assert len(got["rounds"]) == 3 and all(t > 0 for t in got["rounds"]), got
        # the fan-in is the round's messages over the unrounded median round; round_s is rounded to the ms (a
        # round of a few ms is then off by several %, so compare the rounds, not the rates)
        assert 6 * 3 / got["fanin_per_s"] == pytest.approx(got["round_s"], abs=0.0006), got
    # 3.6 MB more through the broker per round (3 x 200 kB to each of 6 clients): never faster in total
    assert sum(full["rounds"]) > sum(upload["rounds"]) * 0.8, (full, upload)
