import pytest

from synthvision.devices import DEVICE_ENV, resolve_device
from synthvision.errors import SpecError


def test_auto_uses_the_rank_device_pinned_by_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cuda:3")
    assert resolve_device("auto") == "cuda:3"
    monkeypatch.delenv(DEVICE_ENV)
    assert resolve_device("auto") in ("cpu", "cuda")
    assert resolve_device("cpu") == "cpu"


def test_unusable_devices_are_clear_errors() -> None:
    with pytest.raises(SpecError, match=r"objects\.params\.device"):
        resolve_device("tpu", "objects.params.device")
