"""Codec tables: a codec per module kind, overridden per modality, task or single adapter; the most specific
selector wins, a bad selector is a named config error, and every link (device uplink, fog uplink, downlinks) codes a
module with its own codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.config import DeviceConfig
from hffm_core.compression import ErrorFeedback, make_codec
from hffm_core.compression.table import check_selector, selectors_of
from hffm_core.config import CodecSpec, load_config, make_codecs
from hffm_core.downlink import VersionPublisher
from hffm_core.errors import ConfigError
from hffm_core.protocol import ModuleKey

ENC_IMAGE, ENC_IMU = ModuleKey.encoder("image"), ModuleKey.encoder("inertial")
AD_DIGIT, AD_SPEAKER = ModuleKey.adapter("image", "digit"), ModuleKey.adapter("speech", "speaker")
AD_IMAGE_OTHER = ModuleKey.adapter("image", "other")
HEAD_DIGIT, HEAD_DEMAND = ModuleKey.head("digit"), ModuleKey.head("demand")


def test_kinds_default_to_fp32_and_the_mapping_holds_the_three_kinds() -> None:
    table = make_codecs({"adapter": CodecSpec(codec="sign")}, "uplink")
    assert dict((k, c.name) for k, c in table.items()) == {"encoder": "fp32", "adapter": "sign", "head": "fp32"}
    assert table.for_key(ENC_IMAGE).name == "fp32" and table.for_key(AD_DIGIT).name == "sign"
    assert table.overrides == {}


def test_the_most_specific_selector_wins() -> None:
    table = make_codecs({"encoder": CodecSpec(codec="lowrank", params={"rank": 4}),
                         "encoder:image": CodecSpec(codec="sign"), "adapter": CodecSpec(codec="int8"),
                         "adapter:image": CodecSpec(codec="fp16"), "adapter:image:digit": CodecSpec(codec="sign"),
                         "head:digit": CodecSpec(codec="int8")}, "uplink")
    assert table.for_key(ENC_IMAGE).name == "sign"
    assert table.for_key(ENC_IMU).name == "lowrank"
    assert table.for_key(AD_DIGIT).name == "sign"  # the single adapter before its modality's
    assert table.for_key(AD_IMAGE_OTHER).name == "fp16"  # the modality's adapters before the kind's
    assert table.for_key(AD_SPEAKER).name == "int8"
    assert table.for_key(HEAD_DIGIT).name == "int8"
    assert table.for_key(HEAD_DEMAND).name == "fp32"  # no head entry: fp32
    assert table["encoder"].name == "lowrank"  # as a mapping: the kind's own codec, not an override
    assert sorted(table.overrides) == ["adapter:image", "adapter:image:digit", "encoder:image", "head:digit"]


def test_selectors_of_each_kind_run_from_specific_to_kind() -> None:
    assert selectors_of(ENC_IMAGE) == ("encoder:image", "encoder")
    assert selectors_of(HEAD_DIGIT) == ("head:digit", "head")
    assert selectors_of(AD_DIGIT) == ("adapter:image:digit", "adapter:image", "adapter")


@pytest.mark.parametrize("selector", ["decoder", "encoder:", "encoder:Image", "encoder:image:_", "head:_:digit",
                                      "head:a:b", "adapter:image:digit:x", "adapter::digit", ":image", "", 3])
def test_bad_selectors_are_named(selector: object) -> None:
    with pytest.raises(ConfigError, match="invalid module selector"):
        check_selector(selector)


def test_make_codecs_names_the_link_and_selector_of_a_bad_entry() -> None:
    with pytest.raises(ConfigError, match=r"^uplink\.encoder:Image: invalid module selector 'encoder:Image'"):
        make_codecs({"encoder:Image": CodecSpec(codec="sign")}, "uplink")
    with pytest.raises(ConfigError, match=r"^downlink\.head:digit: .*nope"):
        make_codecs({"head:digit": CodecSpec(codec="nope")}, "downlink")
    with pytest.raises(ConfigError, match=r"^uplink\.head:digit: .*rank"):
        make_codecs({"head:digit": CodecSpec(codec="sign", params={"rank": 2})}, "uplink")


def test_a_device_config_file_takes_quoted_selectors(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[device]\nid = "dev-1"\nfleet = "demo"\nfog = "fog-1"\nmodalities = ["image", "power"]\n'
                    'tasks = ["digit", "demand"]\n[broker]\nport = 1884\n[data.digit]\ntrain = "d.npz"\n'
                    '[data.demand]\ntrain = "p.npz"\n'
                    '[uplink.encoder]\ncodec = "lowrank"\nparams = { rank = 4, loadings = "int4" }\n'
                    '[uplink."encoder:image"]\ncodec = "sign"\n')
    cfg = load_config(path, DeviceConfig)
    table = make_codecs(cfg.uplink, "uplink")
    assert table.for_key(ENC_IMAGE).name == "sign"
    assert table.for_key(ModuleKey.encoder("power")).name == "lowrank"


def test_the_device_uplink_codes_each_module_with_its_own_codec(tmp_path: Path) -> None:
    from edge_runtime.uplink import Uplink

    table = make_codecs({"encoder": CodecSpec(codec="lowrank", params={"rank": 2}),
                         "encoder:image": CodecSpec(codec="sign")}, "uplink")
    up = Uplink(fleet="demo", fog="fog-1", node="dev-1", codecs=table, feedback=ErrorFeedback(),
                residuals_path=tmp_path / "r.npz", outbox=None, transport=None,  # type: ignore[arg-type]
                base_of=lambda key: (0, 0))
    rng = np.random.default_rng(0)
    delta = {"proj.weight": rng.normal(size=(16, 8)).astype(np.float32),
             "proj.bias": rng.normal(size=16).astype(np.float32)}
    assert up.build(ENC_IMAGE, delta, 10, 0.5, 1, 1).codec == "sign"
    assert up.build(ENC_IMU, delta, 10, 0.5, 1, 1).codec == "lowrank"


def test_the_downlink_publisher_takes_selectors_and_sends_unnamed_modules_raw() -> None:
    pub = VersionPublisher(fleet="f", sender="fog-1", codecs={"adapter:image": make_codec("int8", {})})
    rng = np.random.default_rng(1)
    for key in (AD_DIGIT, AD_SPEAKER):
        pub.true[key] = {"w": rng.normal(size=(12, 6)).astype(np.float32)}
        assert pub.version(key, (1, 0)).codec == "fp32"  # the first version is always the full state
        pub.true[key] = {"w": pub.true[key]["w"] + 0.01}
    assert pub.version(AD_DIGIT, (1, 1)).codec == "int8"
    assert pub.version(AD_SPEAKER, (1, 1)).codec == "fp32"
