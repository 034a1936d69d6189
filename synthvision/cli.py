"""The `synthvision` command line.

Bad input (a SpecError) prints one line `error: ...` to stderr and exits with code 2, never a
traceback. Heavy modules are imported inside commands so `synthvision --help` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from synthvision.errors import SpecError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="synthvision",
    help="Build labeled synthetic image datasets (COCO + YOLO) for training object detectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def user_errors(func: F) -> F:
    """Turn SpecError into one clear line + exit 2, and Ctrl-C into a resume hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            _err(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err("interrupted; re-run the same command to resume where it stopped")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _stdout_gone()
            raise typer.Exit(141) from None  # 128 + SIGPIPE, as `yes | head` ends `yes`
        except OSError as exc:
            if exc.errno not in _DISK_ERRNOS:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            _err(
                f"{_DISK_ERRNOS[exc.errno]}{where}; make room (or choose another --out) and "
                "re-run the same command: finished work is kept"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _stdout_gone() -> None:
    """The reader of our output went away (`synthvision ... | head`): not an error of ours or
    of the input. Point stdout at /dev/null so the interpreter's final flush stays quiet."""
    import os
    import sys

    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_DISK_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system"}  # fmt: skip


def data_errors(hint: str) -> Callable[[F], F]:
    """For commands that read a user's dataset: a malformed file is bad input (one line, exit 2).

    Their readers check what they rely on; what slips through (a truncated JSON or image, a
    field of the wrong type) surfaces as one of these exceptions, named with the file at fault.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except SpecError:  # already says what is wrong
                raise
            except OSError as exc:
                if exc.errno in _DISK_ERRNOS or isinstance(exc, BrokenPipeError):
                    raise  # our output's problem, not the dataset's
                raise SpecError(f"{_describe(exc)}; {hint.format(**kwargs)}") from None
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise SpecError(
                    f"malformed input ({_describe(exc)}); {hint.format(**kwargs)}"
                ) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@app.command()
@user_errors
def build(
    spec: Annotated[Path, typer.Argument(help="YAML spec of the dataset (see configs/).")],
    out: Annotated[
        str | None,  # not Path: Path("") is ".", and an empty --out must not mean the cwd
        typer.Option(
            "--out", "-o", metavar="DIR", help="Output directory (default: outputs/<spec name>)."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a spec key, e.g. --set num_images=100 --set classes.0.count=5."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace synthvision's outputs in --out (a different spec's build, or a "
            "non-synthvision directory); other files are left alone."
        ),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Images per generator call. Default: a diffusion model's batch_size, else 8. "
            "Never changes the dataset.",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Build a dataset from SPEC. Re-running the same command resumes an interrupted build."""
    from synthvision.build import build as run_build
    from synthvision.config import load_spec
    from synthvision.distributed import RankFailedError, launch_rank, process_context, shutdown
    from synthvision.hub import hide_loading_bars
    from synthvision.outdir import output_path

    try:
        spec_obj = load_spec(spec, set_ or [])
        out_dir = output_path(out, "--out") if out is not None else Path("outputs") / spec_obj.name
    except SpecError:
        # Every rank of a launch reads the same spec: the rank-0 process alone says what is
        # wrong (README: "a bad spec is reported once"), the others exit with the same code.
        if launch_rank() not in (None, 0):
            import time

            time.sleep(3)  # the launcher stops every rank once one exits: let rank 0 print first
            raise typer.Exit(2) from None
        raise
    ctx = process_context()  # one process, or this rank of `accelerate launch` / torchrun
    if not (progress and ctx.is_main):
        hide_loading_bars()  # model loading bars too: no output nobody reads
    try:
        result = run_build(
            spec_obj,
            out_dir,
            overwrite=overwrite,
            batch_size=batch_size,
            show_progress=progress and ctx.is_main,
            ctx=ctx,
        )
    except (SpecError, RankFailedError) as exc:
        if ctx.is_main:  # every rank has the error; the main process reports it once
            _err(str(exc))
        if ctx.world_size > 1:
            # The launcher stops every rank once one exits with an error: wait here until the
            # main process has printed its message.
            with contextlib.suppress(Exception):
                ctx.barrier()
        raise typer.Exit(2 if isinstance(exc, SpecError) else 1) from None
    finally:
        if ctx.world_size > 1:
            shutdown()  # every rank has passed the build's final barrier (or the error barrier)
    if not ctx.is_main:
        return
    if result.already_complete:
        typer.echo(f"already complete: {out_dir} (manifest.json exists; nothing to do)")
    m = result.manifest or {}
    counts = m.get("counts", {})
    images = counts.get("images", {})
    per_split = ", ".join(f"{k} {v}" for k, v in images.items() if k != "total")
    typer.echo(
        f"dataset: {out_dir}  ({images.get('total', '?')} images: {per_split}; "
        f"{counts.get('instances', {}).get('total', '?')} instances)"
    )
    outputs = m.get("outputs", {})
    if outputs.get("coco"):
        typer.echo(f"  COCO:    {out_dir / 'coco' / 'annotations'}")
    if outputs.get("yolo"):
        typer.echo(f"  YOLO:    {out_dir / outputs['yolo']}")
    if outputs.get("preview"):
        typer.echo(f"  preview: {out_dir / outputs['preview']}")
    typer.echo(f"  manifest: {out_dir / 'manifest.json'}")
    timings = m.get("timings_s", {})
    if result.generated:
        # Generation alone (its rate), then the whole run: model loading, merge and preview.
        typer.echo(
            f"  generated {result.generated} images in {timings.get('generate', 0.0):.1f} s "
            f"({timings.get('images_per_s')} img/s"
            + (f" with {ctx.world_size} processes" if ctx.world_size > 1 else "")
            + f"); {result.seconds:.1f} s in all with loading and merge"
            + (f"; {result.skipped} already done" if result.skipped else "")
        )
    elif result.skipped:  # a resumed build whose images were all written: only the merge ran
        typer.echo(
            f"  nothing left to generate: {result.skipped} images already done; merged in "
            f"{result.seconds:.1f} s"
        )


@app.command()
@user_errors
def validate(
    dataset: Annotated[Path, typer.Argument(help="A directory written by `synthvision build`.")],
) -> None:
    """Check every format contract of DATASET: COCO, YOLO, images, and that COCO and YOLO agree.

    Prints each problem and exits 1 if there are any.
    """
    from synthvision.validate import validate_dataset

    problems = validate_dataset(dataset)
    for problem in problems:
        typer.echo(f"problem: {problem}")
    if problems:
        typer.echo(f"{dataset}: {len(problems)} problem(s) found", err=True)
        raise typer.Exit(1)
    formats = [f for f in ("COCO", "YOLO") if (dataset / f.lower()).is_dir()]
    checked = [*formats, "images", *(["COCO/YOLO agreement"] if len(formats) == 2 else [])]
    typer.echo(f"{dataset}: valid ({', '.join(checked[:-1])} and {checked[-1]})")


@app.command()
@user_errors
@data_errors("`synthvision validate {dataset}` lists every problem of a build folder")
def preview(
    dataset: Annotated[Path, typer.Argument(help="A directory written by `synthvision build`.")],
    out: Annotated[
        str | None,  # not Path: Path("") is "."
        typer.Option(
            "--out", "-o", metavar="PNG", help="PNG to write (default: DATASET/preview.png)."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Only images of this split.")] = None,
    num: Annotated[int, typer.Option("--num", "-n", help="Number of images in the grid.")] = 16,
) -> None:
    """Draw a PNG grid of DATASET's images with boxes, masks and class names."""
    from synthvision.outdir import output_path
    from synthvision.preview import preview_dataset

    png = output_path(out, "--out", "a PNG file") if out is not None else None
    path = preview_dataset(dataset, png, split=split, num=num)
    typer.echo(f"preview: {path}")


@app.command("sources")
def list_sources() -> None:
    """List the registered scene generators, object sources, background sources and labelers."""
    from synthvision.generators import BACKGROUND_SOURCES, OBJECT_SOURCES, SCENE_GENERATORS
    from synthvision.labelers.base import LABELERS

    for reg in (SCENE_GENERATORS, OBJECT_SOURCES, BACKGROUND_SOURCES, LABELERS):
        typer.echo(f"{reg.kind}s: {', '.join(reg.names())}")


def _register_optional_commands() -> None:
    """Commands that live in their own modules (they import heavy packages lazily)."""
    import importlib

    for module, attr, name, hint in (
        ("synthvision.commands.augment", "augment_command", "augment", "check the files of {src}"),
        ("synthvision.commands.train_cvae", "train_cvae_command", "train-cvae",
         "check the files of {data}"),
        ("synthvision.commands.audit", "audit_command", "audit", "check the files of {run_dir}"),
    ):  # fmt: skip
        try:
            func = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.command(name)(user_errors(data_errors(hint)(func)))


_register_optional_commands()


def main() -> None:
    app(prog_name="synthvision")


if __name__ == "__main__":  # pragma: no cover
    main()
