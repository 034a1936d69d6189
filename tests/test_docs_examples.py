"""What the README promises about devices and `synthvision sources`, checked on this machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from synthvision.devices import DEVICE_ENV, model_device
from synthvision.errors import SpecError


def test_a_pinned_device_this_machine_cannot_use_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert model_device("auto", "objects.params.device") == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(SpecError, match=rf"{DEVICE_ENV}=tpu \(for objects\.params\.device: auto\)"):
        model_device("auto", "objects.params.device")
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(SpecError, match=rf"{DEVICE_ENV}=cuda .*CUDA is not available"):
            model_device("auto", "objects.params.device")
        # an explicit device is checked as it always was, whatever the variable says
        with pytest.raises(SpecError, match=r"^objects\.params\.device: 'cuda:1'"):
            model_device("cuda:1", "objects.params.device")


def test_sources_lists_the_labelers_too() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "synthvision", "sources"], capture_output=True, text=True, check=True
    ).stdout
    assert "object sources: cvae, diffusion, procedural" in out
    assert "labelers: detector" in out
