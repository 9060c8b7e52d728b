"""Where the remote commands point: the cluster (or none), the output root, the S3 endpoint and
prices, resolved once from flags, the config file and the environment."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from linegen.cluster.address import resolve_cluster
from linegen.cost.prices import parse_price
from linegen.errors import UserError
from linegen.settings.config_file import ConfigError, load_config

# Seconds to wait for the dashboard to answer one request: a refused connection fails at once,
# but a busy head (a job decoding on the same node) can take a few seconds to answer.
HTTP_TIMEOUT_S = 10.0


@dataclass
class Context:
    address: Any | None  # cluster.address.ClusterAddress, or None: no cluster given
    out: str | None = None
    s3_endpoint_url: str | None = field(default=None, repr=False)  # may hold credentials: never shown
    config_prices: dict[str, float] = field(default_factory=dict)
    flag_prices: dict[str, float] = field(default_factory=dict)
    config: Any | None = None  # linegen.settings.config_file.Config

    def require_cluster(self):
        if self.address is None:
            raise UserError("no cluster given: pass --cluster http://HEAD:8265, set RAY_ADDRESS, "
                            "or set [cluster] address in the config file")
        return self.address

    def require_target(self) -> None:
        if self.address is None and self.out is None:
            raise UserError("no cluster and no output root given: pass --cluster http://HEAD:8265 or --out "
                            "(or set them in the config file)")

    def prices(self, spec=None) -> dict[str, float]:
        """Built-ins < config [prices] < prices recorded at submit < --price now."""
        merged = dict(self.config_prices)
        merged.update(getattr(spec, "prices", None) or {})
        merged.update(self.flag_prices)
        return merged

    def cluster_text(self) -> str | None:
        return self.address.display if self.address is not None else None


def parse_headers(items: list[str] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for n, item in enumerate(items or [], start=1):
        cuts = [i for i in (item.find("="), item.find(":")) if i >= 0]
        if not cuts:
            # the value may be a secret: never echo it
            raise UserError(f"--header #{n} must look like NAME=VALUE (or 'NAME: VALUE')")
        k, v = item[:min(cuts)], item[min(cuts) + 1:]
        k = k.strip()
        if not k or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k):
            raise UserError(f"--header #{n}: not a valid HTTP header name (letters, digits and !#$%&'*+.^_`|~- only)")
        if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", v):
            # a CR/LF would smuggle another header; the value may be a secret: never echo it
            raise UserError(f"--header {k}: the value holds a line break or another control character")
        headers[k] = v.strip()
    return headers


def make_context(cluster: str | None = None, token: str | None = None, headers: list[str] | None = None,
                 out: str | None = None, config: str | None = None, prices: list[str] | None = None,
                 s3_endpoint_url: str | None = None, token_file: str | None = None,
                 default_out: str | None = None, timeout: float | None = None) -> Context:
    """Flags + config file + environment -> Context. Every problem is a one-line UserError.

    The output root: ``out``, else the config's ``[output] out``, else, when no cluster is given,
    ``default_out`` (the local commands pass `jobs.spec.DEFAULT_OUT`, where `linegen run` writes)."""

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise UserError(str(e)) from None
    try:
        address = resolve_cluster(cluster, token, parse_headers(headers),
                                  token_file=token_file or cfg.cluster.token_file,
                                  default_url=cfg.cluster.address, timeout_s=timeout)
    except ValueError as e:
        raise UserError(str(e)) from None
    flag_prices: dict[str, float] = {}
    for p in prices or []:
        try:
            name, value = parse_price(p)
        except ValueError as e:
            raise UserError(f"--price: {e}") from None
        flag_prices[name] = value
    # The local default applies only without a cluster: a cluster's jobs name their own output root.
    return Context(address=address, out=out or cfg.output.out or (default_out if address is None else None),
                   s3_endpoint_url=s3_endpoint_url or cfg.s3.endpoint_url,
                   config_prices=dict(cfg.prices), flag_prices=flag_prices, config=cfg)
