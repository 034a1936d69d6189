"""Malformed input to every command: one `error:` line, exit code 2, no user file touched.

Each case here once did something else: wrote into the working directory (`--out ""`),
overwrote a file that was not a preview, printed a traceback or a multi-line message, blamed the
dataset for a bad option, or finished with a silently wrong result (NaN settings, an infinite
class weight, a label row of NaN).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from synthvision.build import build
from synthvision.cli import app
from synthvision.config import parse_spec
from synthvision.errors import SpecError

from .helpers import small_spec

SPEC = small_spec(num_images=3, image_size=[48, 64]).to_dict()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_one_error(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0], result.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "ds"
    build(parse_spec(SPEC), out, show_progress=False)
    return out


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "copy", symlinks=True))


def write_spec(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_an_empty_output_path_is_an_error_not_the_working_directory(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path("") is "."; `--out ""` (an unset shell variable) used to build into the cwd."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    spec = write_spec(tmp_path, SPEC)
    monkeypatch.chdir(cwd)
    assert_one_error(invoke("build", str(spec), "--out", "", "--no-progress"), "--out is empty")
    assert_one_error(invoke("preview", str(dataset), "--out", ""), "--out is empty")
    assert_one_error(
        invoke("augment", str(dataset), "", "--preset", "light", "--no-progress"), "OUT is empty"
    )
    assert_one_error(invoke("train-cvae", str(dataset), "-o", " "), "--output is empty")
    assert_one_error(invoke("audit", "builtin", "-o", ""), "--output is empty")
    assert_one_error(invoke("train-cvae", "", "-o", "run"), "does not exist")
    assert list(cwd.iterdir()) == []


def test_preview_replaces_only_an_earlier_preview_and_stays_out_of_the_dataset(
    copy: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    not_png = tmp_path / "holiday.png"
    not_png.write_bytes(b"GIF89a...")
    ann = copy / "coco/annotations/instances_train.json"
    before = ann.read_bytes()
    assert_one_error(invoke("preview", str(copy), "--out", str(ann)), "ending in .png")
    assert_one_error(invoke("preview", str(copy), "--out", str(notes)), "ending in .png")
    assert_one_error(invoke("preview", str(copy), "--out", str(not_png)), "is not a PNG image")
    assert_one_error(
        invoke("preview", str(copy), "--out", str(copy / "yolo/images/train/p.png")),
        "inside the dataset's yolo/ folder",
    )
    assert_one_error(
        invoke("preview", str(copy), "--out", str(notes / "p.png")),
        "a folder on its path is a file",
    )
    (tmp_path / "dir.png").mkdir()
    assert_one_error(invoke("preview", str(copy), "--out", str(tmp_path / "dir.png")), "folder")
    assert ann.read_bytes() == before and notes.read_text() == '{"mine": 1}'
    assert not_png.read_bytes() == b"GIF89a..."
    assert not (copy / "yolo/images/train/p.png").exists()
    # An earlier preview is replaced, as before.
    png = tmp_path / "p.png"
    for _ in range(2):
        result = invoke("preview", str(copy), "--out", str(png), "-n", "2")
        assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("classes", "needle"),
    [
        ([{"name": "disc", "weight": float("inf")}, {"name": "ring"}], "classes.0.weight"),
        ([{"name": n, "weight": 1e308} for n in ("disc", "ring", "star")], "overflows"),
        ([{"name": "disc\x1b[31m"}], "control characters"),
        ([{"name": "\u00e9"}, {"name": "e\u0301"}], "Unicode normalization"),
    ],
)
def test_class_weights_and_names_that_would_build_a_wrong_dataset(
    tmp_path: Path, classes: list[dict], needle: str
) -> None:
    """Weights of 1e308 each used to make the class CDF NaN: every object was class 0."""
    shapes = {c["name"]: "disc" for c in classes}
    data = {
        **SPEC,
        "classes": classes,
        "objects": {"name": "procedural", "params": {"shapes": shapes}},
    }
    with pytest.raises(SpecError, match=needle):
        parse_spec(data)
    out = tmp_path / "out"
    assert_one_error(invoke("build", str(write_spec(tmp_path, data)), "--out", str(out)), needle)
    assert not out.exists()
    # Names that differ only in case are different classes (e.g. letters), as before.
    parse_spec({**SPEC, "classes": [{"name": "disc"}, {"name": "Disc"}]})


def test_spec_file_and_set_errors_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_spec(tmp_path, "name: t\x00\n")  # PyYAML's reader error spans two lines
    assert_one_error(invoke("build", str(spec), "--out", str(out)), "not valid YAML")
    spec = write_spec(tmp_path, SPEC)
    for item in ("..=1", "layout..max_iou=0.2"):
        assert_one_error(
            invoke("build", str(spec), "--out", str(out), "--set", item), "a key part is empty"
        )
    assert_one_error(
        invoke("build", str(spec), "--out", str(out), "--set", "augment.min_area_px=.inf"),
        "augment.min_area_px",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("data.yaml", "data.yaml: not valid YAML"),
        ("nan row", ":1: coordinates must be finite"),
        ("fractional class", ":1: class '1.5' is not an id"),
        ("binary label", "000000000.txt: not a UTF-8 text file"),
        ("truncated image", "000000000.jpg: cannot read the image"),
    ],
)
def test_damaged_yolo_files_are_named_by_preview_and_augment(
    copy: Path, tmp_path: Path, damage: str, needle: str
) -> None:
    shutil.rmtree(copy / "coco")  # so that the YOLO export is read
    label = copy / "yolo/labels/train/000000000.txt"
    image = copy / "yolo/images/train/000000000.jpg"
    if damage == "data.yaml":
        (copy / "yolo/data.yaml").write_text("names: [disc\n")
    elif damage == "nan row":
        label.write_text("0 nan 0.5 0.2 0.2\n")
    elif damage == "fractional class":
        label.write_text("1.5 0.5 0.5 0.2 0.2\n")
    elif damage == "binary label":
        label.write_bytes(b"\xff\xfe\x00\x01")
    else:
        image.write_bytes(image.read_bytes()[:200])
    assert_one_error(invoke("preview", str(copy), "--out", str(tmp_path / "p.png")), needle)
    out = tmp_path / "aug"
    assert_one_error(
        invoke("augment", str(copy), str(out), "--preset", "light", "--no-progress"), needle
    )
    assert not (out / "manifest.json").exists()
    if damage == "data.yaml":  # validate lists it as one problem line
        result = invoke("validate", str(copy))
        assert result.exit_code == 1
        problems = [ln for ln in result.output.splitlines() if "data.yaml" in ln]
        assert problems == [
            "problem: yolo/data.yaml is not valid YAML (expected ',' or ']', but got "
            "'<stream end>' at line 2)"
        ], result.output


def test_a_damaged_manifest_is_named_with_the_way_out(copy: Path, tmp_path: Path) -> None:
    """A re-run of the same spec used to print a JSONDecodeError traceback."""
    (copy / "manifest.json").write_text('{"counts": ')
    spec = write_spec(tmp_path, SPEC)
    result = invoke("build", str(spec), "--out", str(copy), "--no-progress")
    assert_one_error(result, "manifest.json is damaged")
    (copy / "manifest.json").unlink()  # what the message says to do
    result = invoke("build", str(spec), "--out", str(copy), "--no-progress")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads((copy / "manifest.json").read_text()), dict)


def test_augment_keeps_out_of_its_source_and_checks_its_options_first(
    copy: Path, tmp_path: Path
) -> None:
    for out in (copy / "augmented", copy / "yolo" / "images" / "train" / "aug"):
        assert_one_error(
            invoke("augment", str(copy), str(out), "--preset", "light", "--no-progress"),
            "inside the source dataset's folder",
        )
        assert not out.exists()
    assert_one_error(
        invoke(
            "augment",
            str(copy / "yolo/data.yaml"),
            str(copy / "yolo/x"),
            "--preset",
            "light",
            "--no-progress",
        ),
        "inside the source dataset's folder",
    )
    out = tmp_path / "aug"
    assert_one_error(
        invoke(
            "augment", str(copy), str(out), "--preset", "light", "--seed", "-1", "--no-progress"
        ),
        "--seed must be >= 0",
    )
    assert not out.exists()  # found before OUT was claimed, not by numpy half-way
    other = tmp_path / "coco128.yaml"
    other.write_text("names: [a]\n")
    assert_one_error(
        invoke("augment", str(other), str(out), "--preset", "light", "--no-progress"),
        "name this file data.yaml",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "nan"], "--lr must be > 0"),
        (["--free-bits", "nan"], "(finite numbers)"),
        (["--beta", "inf"], "(finite numbers)"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--patch-size", "0"], "--patch-size must be at least 1"),
        (["--split", "nope"], "no COCO annotations of split 'nope' (it has: train, val)"),
    ],
)
def test_train_cvae_refuses_settings_that_train_garbage(
    dataset: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    """--free-bits nan used to train and save a model of NaN weights, exit 0."""
    out = tmp_path / "run"
    assert_one_error(invoke("train-cvae", str(dataset), "-o", str(out), *args), needle)
    assert not out.exists()


def test_train_cvae_and_audit_name_an_output_that_is_a_file(dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert_one_error(
        invoke("train-cvae", str(dataset), "-o", str(blocker)), "--output '" + str(blocker)
    )
    assert_one_error(invoke("audit", "builtin", "-o", str(blocker)), "is a file")
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--temperature", "nan"], "--temperature must be >= 0"),
        (["--flag-ratio", "nan"], "--flag-ratio > 0"),
        (["--seed", "-1"], "--seed >= 0"),
    ],
)
def test_audit_refuses_settings_that_give_a_meaningless_verdict(
    tmp_path: Path, args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--temperature nan used to report "no sign of memorization", exit 0."""
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("audit", "builtin", *args), needle)
    assert os.listdir(tmp_path) == []  # no ./cvae-builtin-audit


def test_a_reader_that_stops_early_is_not_blamed_on_the_dataset(
    dataset: Path, tmp_path: Path
) -> None:
    """`synthvision augment ... | head`: the closed pipe is not "check the files of SRC" (it
    was, exit 2); the command ends quietly with 128 + SIGPIPE, as Unix tools do."""
    import subprocess
    import sys

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "synthvision", "augment", str(dataset), str(tmp_path / "aug")]
    proc = subprocess.Popen(
        [*cmd, "--preset", "light", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command prints its summary
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 141, stderr
    assert stderr == ""
    assert (tmp_path / "aug" / "manifest.json").is_file()  # the work itself was done
