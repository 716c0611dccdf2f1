"""The `headattr` command line: a thin layer over the Python API.

Every command turns its flags into one API call. Input problems raise `HeadattrError`; `main` prints them
on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys

import click

from .errors import HeadattrError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headattr")
def cli() -> None:
    """Gate-IG attention-head attribution for diffusion language models."""


# ---------------------------------------------------------------- attribute / info (models, engine)

# ---------------------------------------------------------------- compare / ensemble (analysis)

# ---------------------------------------------------------------- prune / demo (validation)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; input errors become one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="headattr")
    except HeadattrError as exc:
        click.echo(f"headattr: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("headattr: aborted", err=True)
        return 130
    except click.ClickException as exc:
        ctx_hint = " (see `headattr --help`)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"headattr: error: {exc.format_message()}{ctx_hint}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
