"""``hffm demo --secure``: certificates, access control and signing keys for the demo fleet.

Every node gets a certificate from a fresh fleet CA (its CN is its id, which the brokers take as the user name), every
broker a server certificate (D2D group brokers included), each fog's bridge and fog-to-fog bridge its own
certificate, and each broker the access control generated from the fleet (broker_config/fleet_pki.py). A device
reaches its D2D broker with its own [tls] identity.

Every node also gets an Ed25519 signing key; the public keys of the whole fleet are enrolled in one folder that every
node reads, and each envelope must be signed by the node the topic names (security/signing.py), so enrolling every key
gives no node another's rights.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hffm_core.errors import ConfigError
from hffm_lab.demo.plan import FLEET, DemoOptions, fleet_ids


@dataclass(frozen=True)
class SecureFleet:
    pki: Any  # security.fleet_pki.FleetPki
    node_tables: dict[str, dict[str, Any]]  # node id -> {"tls": {...}, "signing": {...}}

    @classmethod
    def provision(cls, folder: Path, fog_ids: list[str], opts: DemoOptions, *, topology: Any = None,
                  d2d: bool = False) -> SecureFleet:
        """Create the CA, certificates, access control and signing keys under ``folder`` (replacing an old one).
        ``topology`` (a ``broker_config.topology.Topology``): the fleet's fogs and devices come from it, and with
        ``d2d`` its D2D groups and fog links too (their brokers' and bridges' certificates and ACLs).

        Raises:
            ConfigError: a file cannot be written, or a bad topology.
        """
        from broker_config.fleet_pki import provision_fleet
        from hffm_core.security.signing import generate_signing_key

        shutil.rmtree(folder, ignore_errors=True)  # provisioning refuses an existing CA: a new run, a new fleet
        groups: list[tuple[str, ...]] = []
        links: list[tuple[str, str]] = []
        if topology is None:
            fog_of = fleet_ids(opts)
        else:
            fog_of = {d: node.fog for d, node in topology.devices.items()}
            if d2d:
                groups = [g for fog in fog_ids for g in topology.d2d_groups(fog)]
                links = list(topology.fog_links())
        fogs = {fog: sorted(d for d, f in fog_of.items() if f == fog) for fog in fog_ids}
        pki = provision_fleet(folder, FLEET, fogs, groups=groups, links=links)
        keys, enrolled = folder / "signing", folder / "enrolled"
        try:
            enrolled.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {str(enrolled)!r}: {exc}") from None
        tables: dict[str, dict[str, Any]] = {}
        for node in ["cloud", *fog_ids, *sorted(fog_of)]:
            key = keys / f"{node}.key"
            shutil.copyfile(generate_signing_key(key), enrolled / f"{node}.pub")  # it returns the public key's path
            tables[node] = {"tls": pki.tls_table(node), "signing": {"key": str(key), "enrolled": str(enrolled)}}
        return cls(pki=pki, node_tables=tables)
