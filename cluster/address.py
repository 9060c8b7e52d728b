"""Where the Ray cluster is, and how to authenticate to it.

`resolve_cluster()` answers "which cluster does this command talk to?":

- the URL of a remote cluster's dashboard / Jobs API (``http://HEAD:8265``), or
- ``None``: no address anywhere, so the caller uses the embedded local cluster
  (`cluster.local.LocalCluster`).

Ray 2.60 token authentication (read from the installed ``ray`` package):

- The dashboard's HTTP middleware (``ray/_private/authentication/http_token_authentication.py``)
  accepts ``Authorization: Bearer <token>`` (the fallback header ``X-Ray-Authorization`` and the
  cookie ``ray-authentication-token`` are for proxies and browsers). No token -> HTTP 401,
  wrong token -> HTTP 403. ``/api/version`` needs the token; ``/api/authentication_mode`` is public.
- A cluster runs with token auth when ``RAY_AUTH_MODE=token`` is set on every node. Ray reads the
  token from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
  ``~/.ray/auth_token`` (``ray get-auth-token --generate`` writes that file).

This module imports nothing from Ray, so the CLI stays fast.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

AUTH_HEADER = "Authorization"
BEARER_PREFIX = "Bearer "
# Header names whose values are secret and never printed.
_SECRET_HEADERS = {"authorization", "x-ray-authorization", "cookie", "proxy-authorization"}

ENV_URL_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
ENV_TOKEN_VARS = ("LINEGEN_RAY_TOKEN", "RAY_AUTH_TOKEN")


def ray_token_file() -> Path:
    """The token file Ray itself uses: ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    explicit = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".ray" / "auth_token"


def read_token_file(path: str | os.PathLike[str]) -> str:
    """Read a token file (surrounding whitespace stripped); a clear ValueError if unusable."""
    p = Path(path).expanduser()
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"token file {p} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read token file {p}: {e.strerror or e}") from None
    if not token:
        raise ValueError(f"token file {p} is empty")
    return token


REDACTED = "***"
DEFAULT_TIMEOUT_S = 30.0  # one request to the cluster, connect + whole answer (`--timeout`)


def _mask_userinfo(userinfo: str) -> str:
    # "user:password" keeps the user; a lone part may itself be a token, so it goes entirely.
    user, sep, _ = userinfo.partition(":")
    return f"{user}:{REDACTED}" if sep and user else REDACTED


def redact_url(url: str) -> str:
    """A URL as it may be printed or stored: ``user:password@`` becomes ``user:***@``.

    The one redaction helper: every URL that may hold credentials (``--cluster``,
    ``--s3-endpoint-url``, ``RAY_ADDRESS``) is shown, stored and logged through it (or through
    `redact_text` for free text).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except (ValueError, TypeError, AttributeError):
        return "<invalid URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{_mask_userinfo(userinfo)}@{hostport}", parts.path, parts.query,
                       parts.fragment))


# scheme://userinfo@ in free text; userinfo runs to the last "@" before the host (a raw "@" in a
# password still belongs to it, as urlsplit reads it).
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#'\"<>]*)@")


def redact_text(text: str) -> str:
    """Any text (an error message, a reason) with every URL's credentials redacted as in `redact_url`."""
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{_mask_userinfo(m.group(2))}@", str(text))


def is_redacted(url: str | None) -> bool:
    """Whether ``url`` is a redacted form (its credentials are no longer there to use)."""
    return bool(url) and (f":{REDACTED}@" in url or f"//{REDACTED}@" in url)


def mask(secret: str | None) -> str:
    """How a secret appears in logs and reprs: never any part of it."""
    return "<none>" if not secret else "****"


def normalise_url(url: str) -> str:
    """``http(s)://host:port`` without a trailing slash; a bare ``host:port`` gets ``http://``.

    Raises ValueError for anything that is not the HTTP address of a Ray dashboard
    (``ray://`` Ray Client addresses are not supported: use the Jobs API on port 8265).
    """
    raw = url.strip()
    if not raw:
        raise ValueError("empty cluster address")
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"cluster address {url!r} is not an http(s) URL; give the Ray dashboard address, "
            "e.g. http://HEAD:8265 (Ray Client ray:// addresses are not supported)"
        )
    if not parts.hostname:
        raise ValueError(f"cluster address {url!r} has no host")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"cluster address {url!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _is_http_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


@dataclass
class ClusterAddress:
    """A remote Ray cluster: its dashboard URL, an optional token, and extra HTTP headers.

    The token is never shown by ``repr``/``str``; ``token_source`` says where it came from
    (an argument, an environment variable's name, or a file path) so errors can point at it.
    """

    url: str  # without credentials: a ``user:password@`` part moves to `basic_auth`
    token: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    token_source: str | None = None
    basic_auth: str | None = field(default=None, repr=False)  # "user:password" from the URL
    display: str = field(default="", init=False)  # the URL as shown: `redact_url` of what was given
    # Seconds one request may take in all (connect + the whole answer): `--timeout`.
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        given = normalise_url(self.url)
        self.display = redact_url(given)
        parts = urlsplit(given)
        if "@" in parts.netloc:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            self.basic_auth = self.basic_auth or unquote(userinfo)
            given = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
        self.url = given
        if self.token is not None:
            self.token = self.token.strip() or None

    def request_headers(self) -> dict[str, str]:
        """Headers for every request: the extra headers plus ``Authorization: Bearer <token>``, or
        basic auth from the URL's ``user:password@`` when no token is given.

        An ``Authorization`` header given explicitly in ``headers`` wins over both.
        """
        out = dict(self.headers)
        if not any(k.lower() == "authorization" for k in out):
            if self.token:
                out[AUTH_HEADER] = BEARER_PREFIX + self.token
            elif self.basic_auth:
                out[AUTH_HEADER] = "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
        return out

    def masked_headers(self) -> dict[str, str]:
        return {k: ("****" if k.lower() in _SECRET_HEADERS else v) for k, v in self.headers.items()}

    def __repr__(self) -> str:
        return (
            f"ClusterAddress(url={self.display!r}, token={mask(self.token)}, "
            f"token_source={self.token_source!r}, headers={self.masked_headers()!r})"
        )

    __str__ = __repr__


def _resolve_token(
    token: str | None, token_file: str | os.PathLike[str] | None
) -> tuple[str | None, str | None]:
    if token:
        return token, "argument"
    for var in ENV_TOKEN_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value, var
    if token_file:
        return read_token_file(token_file), str(Path(token_file).expanduser())
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        path = ray_token_file()
        if path.is_file():
            return read_token_file(path), str(path)
    return None, None


def resolve_cluster(
    url: str | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    token_file: str | os.PathLike[str] | None = None,
    default_url: str | None = None,
    timeout_s: float | None = None,
) -> ClusterAddress | None:
    """Which cluster to talk to, or None for the embedded local cluster.

    URL, first found wins: ``url`` (e.g. ``--address``), ``RAY_API_SERVER_ADDRESS``,
    ``RAY_ADDRESS`` (only http(s) values: inside a Ray job ``RAY_ADDRESS`` is the GCS address,
    which is not a Jobs API URL), ``default_url`` (e.g. ``[cluster] address`` from the config).

    Token, first found wins: ``token``, ``LINEGEN_RAY_TOKEN``, ``RAY_AUTH_TOKEN``, the file
    ``token_file`` (e.g. ``[cluster] token_file``), and when ``RAY_AUTH_MODE=token`` Ray's own
    token file (``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).
    """
    chosen: str | None = None
    if url and url.strip():
        chosen = url
    else:
        for var in ENV_URL_VARS:
            value = os.environ.get(var, "")
            if value and _is_http_url(value):
                chosen = value
                break
        if chosen is None and default_url and default_url.strip():
            chosen = default_url
    if chosen is None:
        return None
    tok, source = _resolve_token(token, token_file)
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or not 0 < timeout_s <= 86400):
        raise ValueError(f"--timeout must be a number of seconds in (0, 86400], got {timeout_s!r}")
    return ClusterAddress(url=chosen, token=tok, headers=dict(headers or {}), token_source=source,
                          timeout_s=float(timeout_s or DEFAULT_TIMEOUT_S))
