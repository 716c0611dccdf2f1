"""The `headattr` click group and `main`, the entry point: one-line errors, exit status 2, per-command state.

The command modules of this package attach their commands to `cli`; `headattr.cli` imports them all.
"""

from __future__ import annotations

import os

import click
import torch

from headattr.errors import HeadattrError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headattr")
def cli() -> None:
    """Attention-head attribution for diffusion language models (Gate-IG, STP, gradient, ablation, dispersion)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; input errors become one line on stderr and exit status 2."""
    threads, determinism = torch.get_num_threads(), _determinism()
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="headattr")
    except HeadattrError as exc:
        click.echo(f"headattr: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("headattr: interrupted (an interrupted `attribute` continues with --resume)", err=True)
        return 130
    except click.ClickException as exc:
        ctx_hint = " (see `headattr --help`)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"headattr: error: {exc.format_message()}{ctx_hint}", err=True)
        return exc.exit_code
    finally:
        torch.set_num_threads(threads)  # `--threads` lasts one command, also when main is called in-process
        _restore_determinism(determinism)  # so does `--deterministic`
    return 0


def _determinism() -> tuple:
    """What `--deterministic` changes: torch's and cuDNN's flags and CUBLAS_WORKSPACE_CONFIG."""
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


def _restore_determinism(state: tuple) -> None:
    enabled, warn_only, cudnn_deterministic, cudnn_benchmark, cublas = state
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
