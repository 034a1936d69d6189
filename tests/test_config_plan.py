import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from synthvision.config import apply_overrides, load_spec, parse_spec
from synthvision.errors import SpecError
from synthvision.generators.procedural import ProceduralObjectParams
from synthvision.plan import assign_splits, make_plan
from synthvision.spec_yaml import load_yaml

BASE = {"name": "t", "num_images": 20, "classes": [{"name": "disc"}, {"name": "star"}]}


def spec(**over):  # type: ignore[no-untyped-def]
    return parse_spec({**BASE, **over})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({**BASE, "colour": 1}, "colour: unknown key"),
        ({**BASE, "num_images": "many"}, "num_images"),
        ({**BASE, "num_images": 0}, "num_images"),
        ({**BASE, "num_images": 10**12}, "num_images"),  # would hang planning, not fail
        ({**BASE, "objects_per_image": [0, 10**9]}, "objects_per_image.1"),
        ({**BASE, "classes": []}, "classes"),
        ({**BASE, "image_size": [0, 64]}, "image_size.0"),
        ({**BASE, "classes": [{"name": "a", "count": -3}]}, "classes.0.count"),
        ({**BASE, "classes": [{"name": "a", "colour": "red"}]}, "classes.0.colour: unknown key"),
        ({**BASE, "layout": {"max_iou": 2}}, "layout.max_iou"),
        ({**BASE, "splits": {"train": 0.5}}, "sum to 1"),
        ({**BASE, "classes": [{"name": "a/../b"}]}, "classes.0.name"),
        ({**BASE, "classes": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({**BASE, "objects_per_image": [3, 1]}, "objects_per_image"),
        # pydantic's lax mode would read these booleans as 1 / 1.0
        ({**BASE, "num_images": True}, "num_images: expected a number, not the boolean true"),
        ({**BASE, "layout": {"scale": [True, 0.5]}}, "layout: scale: expected a number"),
        ({**BASE, "classes": [{"name": "a", "weight": False}]}, "classes.0: weight: expected"),
    ],
)
def test_bad_specs_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle.replace(".", r"\.")):
        parse_spec(data)


def test_overrides() -> None:
    d = apply_overrides(BASE, ["num_images=5", "classes.1.weight=0.5", "layout.max_iou=0.1"])
    s = parse_spec(d)
    assert s.num_images == 5 and s.classes[1].weight == 0.5 and s.layout.max_iou == 0.1
    assert BASE["num_images"] == 20  # the input is not mutated
    with pytest.raises(SpecError, match="KEY=VALUE"):
        apply_overrides(BASE, ["num_images"])
    with pytest.raises(SpecError, match="list index"):
        apply_overrides(BASE, ["classes.9.weight=1"])


def test_load_spec_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(bad)


def test_booleans_stay_booleans_where_a_field_takes_them() -> None:
    s = spec(augment={"preset": "light", "keep_original": True})
    assert s.augment.keep_original is True
    with pytest.raises(ValidationError, match="outline_prob: expected a number"):
        ProceduralObjectParams.model_validate({"outline_prob": True})


def test_spec_yaml_is_strict_where_pyyaml_is_silent(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\nnum_images: 20\nclasses: [{name: disc}]\nnum_images: 5\n")
    with pytest.raises(SpecError, match="line 4: key 'num_images' is given twice"):
        load_spec(path)
    # merge keys may be overridden: that is what they are for
    merged = load_yaml("base: &b {x: 1, y: 2}\nover: {<<: *b, x: 3}\n")
    assert merged["over"] == {"x": 3, "y": 2}
    # an alias bomb is measured, not expanded: it would take minutes and gigabytes
    rows = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(SpecError, match="aliases expand to more than 1,000,000 values"):
        load_spec(path, ["num_images=3"])
    path.write_text("x: &x [*x]\n")
    with pytest.raises(SpecError, match="refers to a mapping or list that contains it"):
        load_spec(path)
    path.write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="nests mappings or lists too deeply"):
        load_spec(path)


def test_fingerprint_is_stable_and_sensitive() -> None:
    assert spec().fingerprint() == spec().fingerprint()
    assert spec().fingerprint() != spec(seed=1).fingerprint()
    # A spec naming no local file keeps the plain hash (build folders of earlier versions resume)
    plain = json.dumps(spec().to_dict(), sort_keys=True, separators=(",", ":"))
    assert spec().fingerprint() == hashlib.sha256(plain.encode()).hexdigest()


def test_fingerprint_counts_the_contents_of_files_the_spec_names(tmp_path: Path) -> None:
    pipeline = tmp_path / "aug.yaml"
    pipeline.write_text("transform: HorizontalFlip")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    over = {
        "augment": {"file": str(pipeline)},
        "objects": {"name": "cvae", "params": {"checkpoint": str(ckpt)}},
    }
    first = spec(**over).fingerprint()
    assert spec(**over).fingerprint() == first
    pipeline.write_text("transform: ToGray")
    second = spec(**over).fingerprint()
    assert second != first
    (ckpt / "config.json").write_text('{"latent_dim": 4}')
    assert spec(**over).fingerprint() not in (first, second)


def test_spec_paths_are_the_spec_files_and_keywords_are_not_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "runs" / "ck").mkdir(parents=True)
    (project / "runs" / "ck" / "config.json").write_text("{}")
    path = project / "spec.yaml"
    path.write_text(
        "name: t\nnum_images: 2\nclasses: [{name: disc}]\n"
        "objects: {name: cvae, params: {checkpoint: runs/ck}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "builtin").mkdir(parents=True)  # must not count as the shipped checkpoint
    prints = set()
    for cwd in (project, elsewhere):
        monkeypatch.chdir(cwd)
        loaded = load_spec(path)
        assert loaded.objects.params["checkpoint"] == str(project / "runs" / "ck")
        prints.add(loaded.fingerprint())
        builtin = load_spec(path, ["objects.params.checkpoint=builtin"])
        assert builtin.objects.params["checkpoint"] == "builtin"
        prints.add(builtin.fingerprint())
    assert len(prints) == 2  # one per checkpoint, whatever the working directory holds
    # a --set value is typed in a shell: relative to the working directory, left as given
    typed = load_spec(path, ["objects.params.checkpoint=runs/ck"])
    assert typed.objects.params["checkpoint"] == "runs/ck"


def test_splits_are_exact_for_every_prefix() -> None:
    splits = assign_splits({"train": 0.9, "val": 0.1}, 100)
    assert Counter(splits) == {"train": 90, "val": 10}
    assert Counter(splits[:10])["val"] == 1
    assert assign_splits({"train": 0.9, "val": 0.1}, 50) == splits[:50]  # independent of N


def test_plan_is_deterministic_and_seeded() -> None:
    assert make_plan(spec()) == make_plan(spec())
    assert make_plan(spec()) != make_plan(spec(seed=3))
    for job in make_plan(spec(objects_per_image=[2, 4])):
        assert 2 <= len(job.class_ids) <= 4


@pytest.mark.parametrize(
    ("over", "digest"),
    [
        (
            {
                "num_images": 500,
                "classes": [
                    {"name": "a", "weight": 1.0},
                    {"name": "b", "weight": 0.2},
                    {"name": "c", "weight": 3.0},
                ],
                "splits": {"train": 0.7, "val": 0.2, "test": 0.1},
                "objects_per_image": [0, 5],
            },
            "2fa594bf25775977",
        ),
        (
            {
                "num_images": 300,
                "classes": [{"name": "a", "count": 400}, {"name": "b", "count": 50}],
                "objects_per_image": [1, 3],
            },
            "d5a70f01720921ec",
        ),
    ],
)
def test_plan_is_pinned_across_versions(over: dict, digest: str) -> None:
    """A resumed build and a rebuilt dataset depend on the plan never changing for a spec: a
    faster planner must draw the same classes and splits (digests from synthvision 0.1)."""
    jobs = make_plan(spec(**over))
    rows = [(j.index, j.split, j.class_ids) for j in jobs]
    assert hashlib.sha256(repr(rows).encode()).hexdigest()[:16] == digest


def test_plan_prefix_independent_of_num_images_with_weights() -> None:
    small, large = make_plan(spec(num_images=10)), make_plan(spec(num_images=30))
    assert small == large[:10]


def test_count_targets_are_met_exactly() -> None:
    s = spec(
        num_images=30,
        classes=[{"name": "disc", "count": 50}, {"name": "star", "count": 7}],
        objects_per_image=[1, 3],
    )
    counts = Counter(c for job in make_plan(s) for c in job.class_ids)
    assert counts == {0: 50, 1: 7}


def test_impossible_counts_are_a_clear_error() -> None:
    s = spec(num_images=2, classes=[{"name": "disc", "count": 50}], objects_per_image=[1, 3])
    with pytest.raises(SpecError, match="counts sum to 50"):
        make_plan(s)


def test_weights_shape_the_class_mix() -> None:
    s = spec(num_images=400, classes=[{"name": "a", "weight": 1}, {"name": "b", "weight": 0.1}])
    counts = Counter(c for job in make_plan(s) for c in job.class_ids)
    assert 0.05 < counts[1] / (counts[0] + counts[1]) < 0.15


def test_fingerprint_tells_split_orders_apart_and_keeps_sorted_ones() -> None:
    """sort_keys forgot the order of `splits`, yet the plan uses it: two specs building other
    datasets shared a fingerprint, so one resumed (or reported complete) the other's build."""
    val_first = spec(splits={"val": 0.5, "train": 0.5})
    train_first = spec(splits={"train": 0.5, "val": 0.5})
    plans = [[j.split for j in make_plan(s)] for s in (val_first, train_first)]
    assert plans[0] != plans[1] and plans[0][0] == "val" and plans[1][0] == "train"
    assert val_first.fingerprint() != train_first.fingerprint()
    # Sorted orders keep the fingerprints earlier versions gave (their build folders resume):
    # values computed with synthvision before the split order counted.
    old_train_first = "663c188d64e0e62542a1e0e3c4a9ad8e64452ca8ba9bd274ef2bc45c3730fdf1"
    old_default = "6227beed2a4ddcdb318e99d82196debf7237c1f96af867135ed856ad209de99b"
    assert train_first.fingerprint() == old_train_first
    assert spec().fingerprint() == old_default  # splits {train: 0.9, val: 0.1}


@pytest.mark.parametrize(
    "name", ["names", "nc", "path", "download", "yaml_file", "channels", "kpt_shape", "flip_idx"]
)
def test_data_yaml_keys_are_refused_as_split_names(name: str) -> None:
    """data.yaml lists each split by name: a split called `names` or `nc` would replace them."""
    with pytest.raises(SpecError) as info:
        spec(splits={"train": 0.8, name: 0.2})
    message = str(info.value)
    assert f"splits: split name {name!r} is a key of YOLO's data.yaml" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "splits", [{"train": True}, {"train": 0.5, "val": True}, {"train": 1.0, "val": False}]
)
def test_booleans_in_splits_are_refused(splits: dict) -> None:
    """pydantic's lax mode read `splits: {train: true}` as {train: 1.0}, a valid spec."""
    with pytest.raises(SpecError, match="splits: expected a number, not the boolean"):
        spec(splits=splits)


def test_set_descends_into_keys_the_spec_file_leaves_out(tmp_path: Path) -> None:
    """`--set a.b.0=x` on a key the file does not give starts from the field's default, instead
    of a mapping `{"0": x}` (or a component without its `name`) that the spec then refused."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\nnum_images: 4\nclasses: [{name: disc}]\n")  # no layout/background
    base = load_spec(path)
    s = load_spec(path, ["layout.scale.0=0.05"])
    assert s.layout.scale == (0.05, 0.4)  # the default's other end
    assert s.layout.model_dump() == {**base.layout.model_dump(), "scale": (0.05, 0.4)}
    s = load_spec(path, ["background.params.kinds=[solid]"])
    assert s.background.name == base.background.name == "procedural"
    assert s.background.params == {"kinds": ["solid"]}
    assert load_spec(path, ["objects.params.outline_prob=0.5"]).objects.params == {
        "outline_prob": 0.5
    }
    assert load_spec(path, ["export.formats.1=coco"]).export.formats == ["coco"]
    # An override equal to the default is the same spec: same fingerprint, same build folder.
    for same in (["export.formats.0=coco"], ["layout.scale.0=0.12"], ["layout.aspect.1=1.333"]):
        assert load_spec(path, same).fingerprint() == base.fingerprint(), same


def test_an_alias_bomb_of_long_text_is_refused_quickly(tmp_path: Path) -> None:
    """Few values but 70 million characters once expanded (1,000 aliases of a 70 kB string):
    copying or serialising the spec would take gigabytes, so it is measured and refused."""
    path = tmp_path / "spec.yaml"
    path.write_text('x: &s "' + "a" * 70_000 + '"\ny: [' + ", ".join(["*s"] * 1000) + "]\n")
    start = time.perf_counter()
    with pytest.raises(SpecError, match="more than 64,000,000 characters"):
        load_spec(path)
    assert time.perf_counter() - start < 5
    # the same text a few times over is a (bad, but ordinary) spec: no size complaint
    path.write_text('x: &s "' + "a" * 70_000 + '"\ny: [*s, *s]\n')
    with pytest.raises(SpecError, match="x: unknown key"):
        load_spec(path)


def test_a_weight_planned_job_is_made_alone_as_in_the_whole_plan() -> None:
    from synthvision.plan import job_of, plans_per_image

    from .helpers import small_spec

    spec = small_spec(num_images=40, classes=[{"name": "a", "weight": 3.0}, {"name": "b"}])
    splits = assign_splits(spec.splits, spec.num_images)
    assert plans_per_image(spec)
    assert [job_of(spec, i, splits[i]) for i in range(40)] == list(make_plan(spec))
    assert not plans_per_image(small_spec(classes=[{"name": "a", "count": 4}]))


def test_per_image_jobs_equal_the_plan_and_count_by_range() -> None:
    from synthvision.plan import PerImageJobs, plan_jobs, planned_class_counts

    from .helpers import small_spec

    spec = small_spec(num_images=30, classes=[{"name": "a", "weight": 3.0}, {"name": "b"}])
    jobs, plan = plan_jobs(spec), make_plan(spec)
    assert isinstance(jobs, PerImageJobs) and list(jobs) == list(plan)
    assert jobs[-1] == plan[29] and jobs[3:6] == plan[3:6]
    for images in (None, range(0, 11), range(11, 30), range(5, 5)):
        assert planned_class_counts(jobs, 2, images) == planned_class_counts(plan, 2, images)
    parts = [planned_class_counts(jobs, 2, r) for r in (range(0, 11), range(11, 30))]
    assert [a + b for a, b in zip(*parts, strict=True)] == planned_class_counts(plan, 2)
    counted = small_spec(
        num_images=30, classes=[{"name": "a", "count": 20}, {"name": "b", "count": 9}]
    )
    assert not isinstance(plan_jobs(counted), PerImageJobs)
    assert planned_class_counts(plan_jobs(counted), 2, range(0, 30)) == [20, 9]
