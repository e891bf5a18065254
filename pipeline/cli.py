"""`ham`: the command-line face of the pipeline. Each stage command is a thin wrapper around one module's function;
`dvc.yaml` calls them with the paths spelled out."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .common import PipelineError, load_params

PARAMS_OPTION = click.option("--params", "params_path", type=click.Path(path_type=Path), default="params.yaml",
                             show_default=True, help="The params file; the command reads only its own section.")


def friendly_errors(command):
    """Bad input exits non-zero with one clear line instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            raise click.ClickException(str(error)) from None
    return wrapper


@click.group()
@click.version_option(package_name="ham10000-repo")
def main():
    """Build, validate and release the HAM10000 dataset repository (see README.md)."""


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=20180814, show_default=True, help="Seed of the procedural drawing.")
@friendly_errors
def sample(directory, seed):
    """Write the small, deterministic synthetic sample of raw sources into DIRECTORY (the demo's input)."""
    from .sample import write_sample

    counts = write_sample(directory, seed)
    click.echo(f"sample written to {directory}: " + ", ".join(f"{k} {v} files" for k, v in counts.items()))


@main.command()
@PARAMS_OPTION
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/ingest", show_default=True)
@friendly_errors
def ingest(params_path, out):
    """Read every raw source in params `ingest.sources` into one candidates table plus a rejects ledger."""
    from .ingest import ingest as run
    from .validate import ingest_dependency_problems, untracked_sources

    params = load_params(params_path, "ingest")
    repo = params_path.parent
    for index, path, message in ingest_dependency_problems({"ingest": params}, repo):
        raise PipelineError(f"{params_path}: ingest.sources[{index}].path {path}: {message}")
    for path in untracked_sources({"ingest": params}, repo):
        click.echo(f"warning: raw source {path} is not tracked by a .dvc file of its own; run `dvc add {path}` "
                   f"so it is versioned and can be pushed and pulled", err=True)
    result = run(params["sources"], params_path.parent, out, params["max_pixels"])
    click.echo(f"ingest: {len(result.candidates)} candidates, {len(result.rejects)} rejected "
               f"({result.units_read} raw files read, {result.units_cached} unchanged since the last run; "
               f"{result.decoded} images decoded) -> {out}")


@main.command("collect-annotated")
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/annotated", show_default=True)
@friendly_errors
def collect_annotated(params_path, candidates, objects, out):
    """Copy the annotated candidates' images and labels into their own folder: all that training reads."""
    from .annotations import collect_annotated as run

    params = load_params(params_path, "filter")
    counts = run(candidates, objects, Path(params["annotations"]), out)
    click.echo(f"collect-annotated: {counts['collected']} annotated images ({counts['waiting']} annotations wait "
               f"for their images) -> {out}")


@main.command("train-filter")
@PARAMS_OPTION
@click.option("--annotated", type=click.Path(path_type=Path), default="data/interim/annotated", show_default=True,
              help="Folder written by `ham collect-annotated`.")
@click.option("--model", type=click.Path(path_type=Path), default="models/filter.pt", show_default=True)
@click.option("--metrics", type=click.Path(path_type=Path), default="metrics/filter.json", show_default=True)
@click.option("--confusion", type=click.Path(path_type=Path), default="metrics/filter_confusion.csv",
              show_default=True)
@friendly_errors
def train_filter(params_path, annotated, model, metrics, confusion):
    """Train the image-type network (dsc / macro / clinic) on the annotated images."""
    from .train_filter import train_filter as run

    result = run(annotated, load_params(params_path, "filter"), model, metrics, confusion)
    click.echo(f"train-filter: {result['trained_on']} images, held-out accuracy {result['holdout_accuracy']} "
               f"on {result['held_out']} -> {model}")


@main.command("filter")
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default="models/filter.pt", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/filter", show_default=True)
@friendly_errors
def filter_(params_path, candidates, objects, model, out):
    """Decide every candidate's image type (annotation, then a source's declared type, else the model); keep
    dermatoscopic images and write the review queue."""
    from .filter import decide

    params = load_params(params_path, "filter")
    counts = {}
    decisions = decide(candidates, objects, Path(params["annotations"]), model, params, out / "decisions.csv",
                       out / "review_queue.csv", counts=counts)
    kept = sum(d["keep"] == "true" for d in decisions)
    review = sum(d["review"] == "true" for d in decisions)
    click.echo(f"filter: {kept} of {len(decisions)} kept, {review} queued for review ({counts.get('scored', 0)} "
               f"scored on {counts.get('device', '-')}, {counts.get('cached', 0)} from the prediction cache) -> {out}")


@main.command()
@PARAMS_OPTION
@click.option("--queue", type=click.Path(path_type=Path), default="data/interim/filter/review_queue.csv",
              show_default=True, help="Review queue to annotate (ignored with --folder).")
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--folder", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Annotate every image of this folder instead of the review queue.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="CSV the answers are appended to (default: params filter.annotations).")
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@friendly_errors
def annotate(params_path, queue, objects, folder, annotations, port):
    """Serve the annotation page on 127.0.0.1: keys d / c / m answer, s skips, u undoes; every answer is appended
    at once as IMAGE,ANNOTATION,TIMESTAMP, so work resumes where it stopped."""
    from .annotate import serve

    if annotations is None:
        annotations = Path(load_params(params_path, "filter")["annotations"])
    serve(annotations, queue=None if folder else queue, objects=objects, folder=folder, port=port)


@main.command()
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--decisions", type=click.Path(path_type=Path), default="data/interim/filter/decisions.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/standardised", show_default=True)
@friendly_errors
def standardise(params_path, candidates, decisions, objects, out):
    """Turn every kept image into a 600x450 JPEG by the authors' mogrify recipe (only images not done before)."""
    from .standardise import standardise as run

    counts = run(candidates, decisions, objects, load_params(params_path, "standardise"), out / "images",
                 out / "index.csv")
    click.echo(f"standardise: {counts['kept']} images ({counts['processed']} processed, {counts['reused']} reused, "
               f"{counts['duplicates']} identical duplicates) -> {out}")


@main.command()
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--decisions", type=click.Path(path_type=Path), default="data/interim/filter/decisions.csv",
              show_default=True)
@click.option("--standardised", type=click.Path(path_type=Path), default="data/interim/standardised/index.csv",
              show_default=True)
@click.option("--registry", type=click.Path(path_type=Path), default="registry", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/metadata", show_default=True)
@friendly_errors
def metadata(params_path, candidates, decisions, standardised, registry, out):
    """Unify diagnoses, normalise and validate the metadata, give stable image and lesion IDs."""
    from .metadata import build_metadata

    params = load_params(params_path, "metadata")
    counts = build_metadata(candidates, decisions, standardised, params, registry, out,
                            Path(params["rules"]) if params.get("rules") else None)
    click.echo(f"metadata: {counts['rows']} rows, {counts['excluded']} excluded (see {out}/excluded.csv), "
               f"{counts['new_image_ids']} new image IDs, {counts['new_lesion_ids']} new lesion IDs")
    for source, figures in counts["unify_coverage"].items():  # how well the diagnosis rules cover each source
        classes = ", ".join(f"{k} {v}" for k, v in figures.items() if v and k != "total")
        click.echo(f"unify coverage {source}: {figures['total']} reports: {classes}")


@main.command()
@PARAMS_OPTION
@click.option("--metadata", "metadata_csv", type=click.Path(path_type=Path),
              default="data/interim/metadata/metadata.csv", show_default=True)
@click.option("--images", type=click.Path(path_type=Path), default="data/interim/metadata/images.csv",
              show_default=True)
@click.option("--registry", type=click.Path(path_type=Path), default="registry/splits.csv", show_default=True)
@friendly_errors
def split(params_path, metadata_csv, images, registry):
    """Assign every new lesion to train / val / test (lesion-disjoint; assigned lesions never move)."""
    from .split import assign_splits

    counts = assign_splits(metadata_csv, images, load_params(params_path, "split"), registry)
    click.echo(f"split: {counts['new_lesions']} new lesions assigned; images per split {counts['images']}")


@main.command()
@PARAMS_OPTION
@click.option("--metadata", "metadata_csv", type=click.Path(path_type=Path),
              default="data/interim/metadata/metadata.csv", show_default=True)
@click.option("--images", type=click.Path(path_type=Path), default="data/interim/metadata/images.csv",
              show_default=True)
@click.option("--splits", type=click.Path(path_type=Path), default="registry/splits.csv", show_default=True)
@click.option("--standardised", type=click.Path(path_type=Path), default="data/interim/standardised/images",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="release", show_default=True)
@click.option("--summary", "summary_json", type=click.Path(path_type=Path), default="metrics/release.json",
              show_default=True)
@friendly_errors
def release(params_path, metadata_csv, images, splits, standardised, out, summary_json):
    """Write the release folder: images and metadata per split, attribution, manifest with every file's sha256."""
    from .release import build_release, format_summary

    summary = build_release(metadata_csv, images, splits, standardised, load_params(params_path, "release"), out,
                            summary_json)
    click.echo(format_summary(summary))


@main.command()
@click.argument("summary_json", type=click.Path(path_type=Path), default="metrics/release.json")
@friendly_errors
def summary(summary_json):
    """Print a release's counts per split and class (from its summary file)."""
    from .release import format_summary

    if not summary_json.exists():
        raise PipelineError(f"{summary_json}: not found; run `dvc repro` first")
    click.echo(format_summary(json.loads(summary_json.read_text())))


from .unify import unify_command  # noqa: E402  (registered after the stage commands, for --help order)
from .validate import validate_command  # noqa: E402

main.add_command(unify_command, "unify")
main.add_command(validate_command, "validate")

if __name__ == "__main__":
    sys.exit(main())
