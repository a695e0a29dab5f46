"""The Flower column of ``hffm bench scale``: a Flower simulation (Ray backend) of K no-op clients, each returning
the same arrays a simulated hffm device sends in a cluster round (its module sizes, fp32), FedAvg over them.

This file is run as a script by an interpreter that has ``flwr[simulation]`` (``hffm bench scale --flower-python``),
so it imports only Flower, numpy and the standard library: nothing of hffm. It prints one JSON line:
``{"flwr": version, "rounds": [{"round": r, "seconds": s}, ...], "wall_s": ...}``; a round is timed from the
strategy's ``configure_train`` to the end of its ``aggregate_train`` (the server's view of one round trip).

Usage: ``python scale_flower.py K ROUNDS SIZE[,SIZE...] [CPUS_PER_CLIENT]`` (sizes in float32 values).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    clients, rounds = int(argv[0]), int(argv[1])
    sizes = [int(s) for s in argv[2].split(",")]
    cpus = float(argv[3]) if len(argv) > 3 else 1.0
    payload = [np.full(n, 1e-3, np.float32) for n in sizes]
    timings: list[dict[str, float]] = []

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid):  # type: ignore[no-untyped-def]
            timings.append({"round": server_round, "start": time.monotonic()})
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies):  # type: ignore[no-untyped-def]
            out = super().aggregate_train(server_round, replies)
            timings[-1]["end"] = time.monotonic()
            return out

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:  # noqa: ARG001 - Flower's signature
        content = RecordDict({"arrays": ArrayRecord(payload), "metrics": MetricRecord({"num-examples": 100})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def server(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                               min_available_nodes=clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(n, np.float32) for n in sizes]),
                       num_rounds=rounds)

    started = time.monotonic()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "error", "log_to_driver": False}})
    rows = [{"round": int(t["round"]), "seconds": round(t["end"] - t["start"], 3)} for t in timings if "end" in t]
    print(json.dumps({"flwr": flwr.__version__, "rounds": rows, "wall_s": round(time.monotonic() - started, 1),
                      "cpus_per_client": cpus, "pid": os.getpid()}))
    return 0 if len(rows) == rounds else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
