"""Import boundaries: the package graph points only downward (docs/architecture.md, "Package map").

    hffm_core                      protocol, transport, service loop, codecs, delivery, signing/TLS, aggregation, config
      <- hffm_model                the foundation model: backbone, M3T modules, model/task spec, task files, training
      <- edge_runtime | fog_gateway | cloud | broker_config     the device, the two services, the fleet's broker configs
      <- hffm_lab                  demo, benchmarks, broker/fault/attack harnesses, the M3T-Bench dataset builder
      <- hffm_cli                  the `hffm` command

A package may import its own layer's package (itself) and any package on a lower layer; nothing else. Every import
counts, a lazy one inside a function included. The test prints the graph it found (``pytest -s``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LAYERS: dict[str, int] = {
    "hffm_core": 0,
    "hffm_model": 1,
    "edge_runtime": 2,
    "fog_gateway": 2,
    "cloud": 2,
    "broker_config": 2,
    "hffm_lab": 3,
    "hffm_cli": 4,
}
# The fog and the broker configs never need torch: they must not reach the model layer either.
TORCH_FREE = {"hffm_core", "fog_gateway", "broker_config"}


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pkg in LAYERS:
        files = sorted((ROOT / pkg).rglob("*.py"))
        assert files, f"package {pkg} has no Python files under {ROOT}"
        for path in files:
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    assert node.level == 0, f"{path}: relative import; the layering check needs absolute imports"
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in LAYERS and top != pkg:
                        edges[(pkg, top)].append(str(path.relative_to(ROOT)))
    return edges


def test_every_package_edge_points_down() -> None:
    edges = package_edges()
    print("\npackage dependency graph (importer -> imported, files):")
    for (a, b), files in sorted(edges.items(), key=lambda e: (LAYERS[e[0][0]], e[0])):
        print(f"  {a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]}): {len(files)}")
    upward = {f"{a} -> {b}": sorted(set(files)) for (a, b), files in edges.items() if LAYERS[b] >= LAYERS[a]}
    assert not upward, f"imports that do not point down a layer: {upward}"
    # The graph is not empty: the services do rest on the core.
    assert ("fog_gateway", "hffm_core") in edges and ("cloud", "hffm_core") in edges
    assert ("edge_runtime", "hffm_model") in edges and ("hffm_cli", "hffm_lab") in edges


def test_torch_free_packages_do_not_reach_the_model() -> None:
    edges = package_edges()
    bad = {f"{a} -> {b}": sorted(set(f)) for (a, b), f in edges.items() if a in TORCH_FREE and b == "hffm_model"}
    assert not bad, f"a torch-free package imports the model layer: {bad}"


def test_services_do_not_import_the_benchmark_catalogue() -> None:
    """The fog and the cloud learn what they need from adverts and their config, not from the M3T-Bench builder."""
    for pkg in ("fog_gateway", "cloud", "hffm_core", "hffm_model", "edge_runtime"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert "hffm_lab" not in text.replace("hffm_lab/", ""), f"{path} names the lab package"
