"""The command line: bad input is one clear line and exit code 2, with nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import small_spec

GOOD = small_spec(num_images=3).to_dict()


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthvision", *args], capture_output=True, text=True, cwd=cwd
    )


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_SPECS = {
    "unknown key": ({**GOOD, "colour": "red"}, "colour"),
    "wrong type": ({**GOOD, "num_images": "lots"}, "num_images"),
    "zero count": ({**GOOD, "num_images": 0}, "num_images"),
    "negative class count": (
        {**GOOD, "classes": [{"name": "disc", "count": -1}]},
        "classes.0.count",
    ),
    "empty class list": ({**GOOD, "classes": []}, "classes"),
    "image size not positive": ({**GOOD, "image_size": [0, 64]}, "image_size"),
    "unknown source": ({**GOOD, "objects": {"name": "nope"}}, "objects.name"),
    "unknown source param": (
        {**GOOD, "background": {"name": "procedural", "params": {"wat": 1}}},
        "background.params.wat",
    ),
    "class unknown to the source": ({**GOOD, "classes": [{"name": "zebra"}]}, "zebra"),
    "unknown augmentation preset": ({**GOOD, "augment": {"preset": "foo"}}, "foo"),
    "missing augmentation file": ({**GOOD, "augment": {"file": "nofile.yaml"}}, "nofile.yaml"),
    "reversed range": ({**GOOD, "objects_per_image": [6, 1]}, "objects_per_image"),
    "repeated class": ({**GOOD, "classes": [{"name": "disc"}, {"name": "disc"}]}, "disc"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_exit_2_no_manifest(tmp_path: Path, case: str) -> None:
    data, needle = BAD_SPECS[case]
    out = tmp_path / "out"
    res = run("build", str(write_spec(tmp_path, data)), "--out", str(out), "--no-progress")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines[0]) < 250, "the message quotes what is wrong, not the whole spec"
    assert not out.exists()  # nothing written: the fixed command runs without --overwrite


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run("build", str(write_spec(tmp_path, GOOD)), "--out", str(blocker / "out"))
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "--out" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_spec_file_and_bad_override(tmp_path: Path) -> None:
    res = run("build", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run("build", str(write_spec(tmp_path, GOOD)), "--set", "num_images")
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr


def test_build_validate_preview_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    spec_path = write_spec(tmp_path, GOOD)
    res = run("build", str(spec_path), "--out", str(out), "--set", "num_images=4", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "preview:" in res.stdout and str(out) in res.stdout
    assert run("validate", str(out)).returncode == 0
    res = run("preview", str(out), "--out", str(tmp_path / "p.png"), "-n", "3")
    assert res.returncode == 0 and (tmp_path / "p.png").stat().st_size > 0
    # A broken dataset fails validation with a non-zero code.
    next((out / "yolo/labels/train").glob("*.txt")).write_text("0 0.5 0.5 1.5 0.2\n")
    res = run("validate", str(out))
    assert res.returncode == 1 and "problem:" in res.stdout
    # Damaged files reach preview and augment as bad input: one line, exit 2, no traceback.
    ann = out / "coco/annotations/instances_train.json"
    ann.write_text(ann.read_text()[:100])
    res = run("preview", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "JSONDecodeError" in res.stderr and f"synthvision validate {out}" in res.stderr
    ann.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": 3}]}')
    res = run("augment", str(out), str(tmp_path / "aug"), "--preset", "light")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_validate_missing_dir_is_exit_2(tmp_path: Path) -> None:
    res = run("validate", str(tmp_path / "nope"))
    assert res.returncode == 2 and res.stderr.startswith("error: ")
    # a folder that is no synthvision output (e.g. a raw COCO download) is not "unfinished"
    (tmp_path / "raw" / "annotations").mkdir(parents=True)
    res = run("validate", str(tmp_path / "raw"))
    assert res.returncode == 2 and "is not a synthvision dataset" in res.stderr, res.stderr
    (tmp_path / "file.json").write_text("{}")
    res = run("preview", str(tmp_path / "file.json"))
    assert res.returncode == 2 and "is a file: give the dataset's folder" in res.stderr


def test_help_is_fast_and_lists_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("build", "validate", "preview"):
        assert cmd in res.stdout
    probe = "import sys, synthvision.cli; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_help_texts_show_their_defaults() -> None:
    """Rich reads "[...]" in a help text as markup and drops it: defaults must not vanish."""
    from typer.testing import CliRunner

    from synthvision.cli import app

    runner = CliRunner()
    for command, shown in [
        ("build", "outputs/<spec name>"),
        ("preview", "DATASET/preview.png"),
        ("audit", "RUN_DIR/audit"),
        ("train-cvae", "beside the JSON"),
    ]:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert shown in result.output, f"{command} --help lost {shown!r}"


def test_no_progress_also_hides_the_model_loading_bars(tmp_path: Path) -> None:
    """`--no-progress` (and every rank but the main one) draws no Hugging Face loading bars."""
    pytest.importorskip("diffusers")
    from tests import tiny_models

    spec = write_spec(
        tmp_path,
        {
            **small_spec(num_images=2, image_size=[32, 32]).to_dict(),
            "layout": {"min_area_px": 4, "scale": [0.3, 0.6]},
            "scene": {
                "name": "diffusion-attention",
                "params": {"model": tiny_models.sd_model(), "steps": 1, "min_instances": 0},
            },
        },
    )
    shown = run("build", str(spec), "--out", str(tmp_path / "a"), "--batch-size", "2")
    quiet = run(
        "build", str(spec), "--out", str(tmp_path / "b"), "--batch-size", "2", "--no-progress"
    )
    assert shown.returncode == 0 and quiet.returncode == 0, shown.stderr + quiet.stderr
    assert "Loading pipeline components" in shown.stderr  # the bars this test looks for
    assert "Loading" not in quiet.stderr and quiet.stderr.strip() == ""


LAUNCHER_RANKS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@pytest.mark.parametrize(
    ("env", "printed"),
    [
        ({"RANK": "1"}, False),
        ({"OMPI_COMM_WORLD_RANK": "3"}, False),
        ({"RANK": "0"}, True),
        ({}, True),
    ],
    ids=["rank 1", "mpirun rank 3", "rank 0", "no launcher"],
)
def test_under_a_launcher_a_bad_spec_is_reported_by_rank_0_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], printed: bool
) -> None:
    """Every rank of `torchrun`/`accelerate launch` reads the same bad spec: one `error:` line
    (rank 0's), not one per process; the other ranks exit with the same code, silently."""
    import time

    from typer.testing import CliRunner

    from synthvision.cli import app

    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # a rank > 0 waits for rank 0 to print
    spec = write_spec(tmp_path, {**GOOD, "num_images": 0})
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["build", str(spec), "--out", str(out), "--no-progress"],
        env={**dict.fromkeys(LAUNCHER_RANKS), **env},  # None: unset
    )
    assert result.exit_code == 2, result.output
    if printed:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "num_images" in lines[0]
    else:
        assert result.output == ""
    assert not out.exists()


def test_a_spec_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    """Not "does not exist" for a folder that plainly exists (e.g. `build configs/`)."""
    from typer.testing import CliRunner

    from synthvision.cli import app

    result = CliRunner().invoke(app, ["build", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: spec file {str(tmp_path)!r} is a folder (give the path to a YAML spec)\n"
    )
    assert not (tmp_path / "out").exists()
