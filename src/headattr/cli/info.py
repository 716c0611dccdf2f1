"""`headattr info`: what headattr detects in a checkpoint, read from a meta-device model (no weights loaded)."""

from __future__ import annotations

import click

from headattr.cli.app import cli
from headattr.cli.options import model_config, model_options
from headattr.models import default_device, resolve_dtype


@cli.command()
@click.argument("model")
@model_options
def info(model: str, **options) -> None:
    """Print what headattr detects in MODEL (family, shape, mask token, shift) without attributing.

    Only the config, the tokenizer and the weights' names and shapes are read (a meta-device model), so this
    takes a second on a 7B checkpoint; the dtype and device are those a run with the same flags would use.
    """
    loading = model_config(options)
    device = loading.device or default_device()
    dtype = str(resolve_dtype(loading.dtype, device)).removeprefix("torch.")
    spec = loading.replace(device="meta", dtype=dtype).load(model)
    d = spec.describe()
    shift = "on (position j predicted from j-1)" if spec.logit_shift else "off (position j predicted from j)"
    rows = [
        ("model", d["path"]),
        ("family", d["family"]),
        ("layers", d["num_layers"]),
        ("query heads", d["num_heads"]),
        ("kv heads", d["num_kv_heads"]),
        ("head dim", d["head_dim"]),
        *spec.architecture_rows(),
        ("head module", d["head_module_label"]),
        (
            "mask token id",
            d["mask_token_id"] if d["mask_token_id"] is not None else "unknown (pass --mask-token-id)",
        ),
        ("logit shift", shift),
        ("parameters", f"{d['num_parameters']:,}"),
        ("dtype", dtype),
        ("device", device),
        ("layer reuse", "yes" if d["layer_reuse"] else "no (whole forward per layer)"),
        ("config hash", d["config_hash"][:16]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
