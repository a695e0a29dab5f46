"""Provision a whole fleet in one folder: a CA, a certificate for every node, bridge and broker, a CRL, and one
ACL file per broker. The demo's secure mode and the auth-matrix check use it.

With D2D groups and fog links (:class:`~broker_config.acl.FleetSpec` ``groups`` / ``links``, or
:meth:`~broker_config.acl.FleetSpec.from_topology`), it also issues each D2D group broker's server certificate
(``broker-d2d-<hub>``) and each fog's peer-bridge certificate (``bridge-peer-<fog>``, for the fogs that run a
fog-to-fog bridge: the lower id of a link), and writes each D2D broker's access control.

Folder layout (``folder`` is the argument of :func:`provision_fleet`):

| Path | What |
|---|---|
| ``pki/`` | the PKI folder (:mod:`broker_config.pki`): ``ca.pem``, ``crl.pem``, ``issued/<id>.pem|.key`` |
| ``acl/<broker>.json`` | the access control the broker loads (dynamic-security plugin config) for the cloud broker (``cloud.json``), each fog broker (``<fog>.json``) and each D2D broker (``d2d-<hub>.json``) |
| ``acl/<broker>.acl`` | the same rules as a classic Mosquitto ``acl_file``, for review |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker_config.acl import CLOUD_BROKER, FleetSpec, peer_bridge_id, write_acl, write_dynsec
from broker_config.broker_tls import BrokerTls
from broker_config.pki import (
    DEFAULT_HOSTS,
    Pki,
    bridge_id,
    broker_id,
    init_ca,
    issue,
)
from hffm_core.errors import ConfigError
from hffm_core.security.tls import TlsSettings

__all__ = ["FleetPki", "provision_fleet"]


@dataclass(frozen=True, slots=True)
class FleetPki:
    """Paths of a provisioned fleet. Every method raises ConfigError for an id the fleet does not have."""

    folder: Path
    spec: FleetSpec

    @property
    def pki(self) -> Pki:
        return Pki(self.folder / "pki")

    @property
    def ca(self) -> Path:
        return self.pki.ca_cert

    @property
    def crl(self) -> Path:
        return self.pki.crl

    def acl(self, broker: str) -> Path:
        """The access-control file ``broker`` (``"cloud"``, a fog id or ``d2d-<hub>``) loads: its dynamic-security
        config."""
        self._check_broker(broker)
        return self.folder / "acl" / f"{broker}.json"

    def acl_text(self, broker: str) -> Path:
        """The same rules as a classic ``acl_file`` (for review)."""
        self._check_broker(broker)
        return self.folder / "acl" / f"{broker}.acl"

    def identity(self, node_id: str) -> TlsSettings:
        """The client TLS settings of a node (the cloud, a fog gateway or a device)."""
        if node_id != self.spec.cloud and node_id not in self.spec.fog_ids and not any(
            node_id in devices for _, devices in self.spec.fogs
        ):
            raise ConfigError(f"fleet {self.spec.fleet!r} has no node {node_id!r}")
        return self._settings(node_id)

    def tls_table(self, node_id: str) -> dict[str, str]:
        """The ``[tls]`` config table of a node (absolute paths), for its TOML config."""
        tls = self.identity(node_id)
        return {"ca": str(tls.ca), "cert": str(tls.cert), "key": str(tls.key)}

    def bridge(self, fog: str) -> TlsSettings:
        """The TLS settings of fog ``fog``'s bridge to the cloud broker (for ``BridgeSpec(tls=...)``)."""
        self.spec.devices(fog)
        return self._settings(bridge_id(fog))

    def peer_bridge(self, fog: str) -> TlsSettings:
        """The TLS settings of fog ``fog``'s fog-to-fog bridges (``PeerBridgeSpec(tls=...)``); only a fog that runs
        one (the lower id of a fog link) has them."""
        if not any(low == fog for low, _ in self.spec.links):
            raise ConfigError(f"fog {fog!r} runs no fog-to-fog bridge in fleet {self.spec.fleet!r} (the lower id of "
                              f"each link runs it; links {[list(x) for x in self.spec.links]})")
        return self._settings(peer_bridge_id(fog))

    def broker(self, broker: str) -> BrokerTls:
        """The listener TLS of ``broker`` (``"cloud"``, a fog id or ``d2d-<hub>``), probing ``$SYS`` as the cloud
        service, the fog gateway or the group's hub device (for ``MosquittoProcess(tls=...)``)."""
        self._check_broker(broker)
        server = self._settings(broker_id(broker))
        group = self.spec.d2d_brokers.get(broker)
        probe = self._settings(self.spec.cloud if broker == CLOUD_BROKER else group[0] if group else broker)
        return BrokerTls(ca=self.ca, cert=server.cert, key=server.key, crl=self.crl, acl=self.acl(broker),
                         probe=probe)

    def _settings(self, cert_id: str) -> TlsSettings:
        return TlsSettings(ca=self.ca, cert=self.pki.cert(cert_id), key=self.pki.key(cert_id))

    def _check_broker(self, broker: str) -> None:
        if broker != CLOUD_BROKER and broker not in self.spec.d2d_brokers:
            self.spec.devices(broker)


def provision_fleet(
    folder: Path,
    fleet: str,
    fogs: Mapping[str, Sequence[str]],
    *,
    cloud: str = "cloud",
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    validity: Mapping[str, tuple[dt.datetime, dt.datetime]] | None = None,
    groups: Sequence[Sequence[str]] = (),
    links: Sequence[Sequence[str]] = (),
) -> FleetPki:
    """Create ``folder/pki`` (a new CA) and issue: the cloud service, each fog gateway, each device (role
    ``device``), each fog's bridge (``bridge-<fog>``), each fog-to-fog bridge identity (``bridge-peer-<fog>``, for
    the lower fog of each of ``links``), and a server certificate per broker (``broker-cloud``, ``broker-<fog>``,
    ``broker-d2d-<hub>`` for each D2D group of ``groups``, naming ``hosts``); write the CRL and each broker's access
    control (``folder/acl/``).

    ``validity`` maps a certificate id to its (not_before, not_after), overriding ``days`` (tests make an
    expired certificate with it).

    Raises:
        ConfigError: a bad topology (see :class:`FleetSpec`), ``folder/pki`` already holds a CA, a bad host or
            validity, an unknown id in ``validity``, or a file cannot be written.
    """
    spec = FleetSpec.of(fleet, fogs, cloud, groups=groups, links=links)
    result = FleetPki(Path(folder), spec)
    windows = dict(validity or {})
    roles: dict[str, str] = {spec.cloud: "cloud", broker_id(CLOUD_BROKER): "broker"}
    for fog, devices in spec.fogs:
        roles |= {fog: "fog", bridge_id(fog): "bridge", broker_id(fog): "broker"}
        roles |= {device: "device" for device in devices}
    roles |= {peer_bridge_id(low): "bridge" for low, _ in spec.links}
    roles |= {broker_id(name): "broker" for name in spec.d2d_brokers}
    unknown = sorted(set(windows) - set(roles))
    if unknown:
        raise ConfigError(f"validity given for unknown certificate id(s) {unknown}")
    init_ca(result.pki.root)
    for cert_id, role in roles.items():
        start, end = windows.get(cert_id, (None, None))
        issue(result.pki.root, cert_id, role, days=days, hosts=hosts if role == "broker" else (),
              not_before=start, not_after=end)
    try:
        (result.folder / "acl").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {str(result.folder / 'acl')!r}: {exc}") from None
    for broker in spec.brokers:
        write_dynsec(spec, broker, result.acl(broker))
        write_acl(spec, broker, result.acl_text(broker))
    return result
