"""``batchnlp models``: stage checkpoints in object storage, pin them by digest, list them."""

from __future__ import annotations

from typing import Any

import click

from batchnlp.cli.options import storage_option
from batchnlp.cli.outcome import user_errors
from batchnlp.util.redaction import redact_url


@click.group()
def models() -> None:
    """Stage checkpoints in object storage, for jobs that cannot reach the Hugging Face Hub."""


@models.command("pull")
@click.argument("ref")
@click.argument("dest")
@click.option("--overwrite", is_flag=True, help="Replace the files of a model already at DEST.")
@storage_option("DEST")
def models_pull(ref: str, dest: str, overwrite: bool, storage_option: Any) -> None:
    """Copy REF (Hub id[@revision] or local directory) to DEST, e.g. s3://bucket/models/sst2/."""
    with user_errors(False):
        from batchnlp.inference.models.store import pull

        provenance = pull(ref, dest, dict(storage_option), overwrite)
    revision = f" at revision {provenance['revision']}" if provenance["revision"] else ""
    click.echo(f"copied {ref}{revision} to {redact_url(dest)}: {', '.join(provenance['files'])}")
    click.echo(f"digest {provenance['digest']}; pin it in a job spec as {redact_url(dest)}@{provenance['digest']}")


@models.command("digest")
@click.argument("ref")
@storage_option("REF")
def models_digest(ref: str, storage_option: Any) -> None:
    """Print REF pinned to its content, for a job spec: REF@sha256:<digest>.

    The digest covers the files a job loads (config, tokenizer, *.safetensors) and is the same
    for a directory and its copy in S3. An s3:// prefix is downloaded to hash it, once per
    machine (into the model cache jobs use). A Hub id prints as ID@COMMIT: Hub refs pin by commit.

    \b
    Examples:
      batchnlp models digest s3://acme-models/models/distilbert-sst2/
      batchnlp models digest ./checkpoints/sst2
    """
    with user_errors(False, interactive=True):
        from batchnlp.inference.models.stage import pinned

        click.echo(pinned(ref, dict(storage_option)))


@models.command("ls")
@click.argument("url")
@storage_option("URL")
def models_ls(url: str, storage_option: Any) -> None:
    """List the checkpoints at URL and one level below it."""
    with user_errors(False):
        from batchnlp.inference.models.store import list_models

        found = list_models(url, dict(storage_option))
    if not found:
        click.echo(f"no checkpoints (config.json) at {redact_url(url)} or one level below")
    for model in found:
        revision = model["revision"] or "-"
        source = f"  {model['source']}@{revision} pulled {model['pulled_at']}" if model["source"] else ""
        click.echo(f"{model['url']}  {model['files']} files  {model['bytes'] / 1e6:.1f} MB{source}")
