"""S3 objects through the direct client: a presigned GET, then a ranged read.

The s3fs target's own botocore client signs a ``GetObject`` URL (its
credentials, endpoint, region and addressing style, as given to the
target); the direct client then sends that URL with ``Range`` (and
``If-Match`` on a known ETag), so S3 bodies land in the chunks' buffers as
HTTP ones do. A signed URL is kept for a minute per object, well inside its
validity, so a run of ranged reads signs once.

Targets with options a presigned GET does not carry — requester pays, extra
``GetObject`` arguments (SSE-C keys), per-bucket region clients, proxies —
return ``None``: those reads go through s3fs as before.

TLS for an ``https`` endpoint follows the target: ``client_kwargs={"verify":
False}`` turns the check off, ``verify="/path/ca.pem"`` (or
``AWS_CA_BUNDLE``) names the CA bundle, else the system's trust store.
"""

from __future__ import annotations

import os
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from cachefs.receive.pool import Endpoint
from cachefs.receive.ranged import DirectGet
from cachefs.receive.targets import tls_context

__all__ = ["SignedGets", "s3_get"]

#: Seconds a signed URL is valid, and how long one is reused.
SIGNED_FOR, REUSED_FOR = 900, 60.0
_CAFILES: dict[str, ssl.SSLContext] = {}

#: Signed GETs by (bucket, key, version id), with when they stop being reused.
SignedGets = dict[tuple[str, str, str | None], tuple[float, DirectGet]]


def _eligible(target: Any) -> bool:
    return bool(
        not target.requester_pays
        and not target.s3_additional_kwargs
        and not getattr(target, "cache_regions", False)
        and not target.config_kwargs.get("proxies")
        and not target.client_kwargs.get("config")
    )


def _tls(target: Any) -> ssl.SSLContext | None:
    verify = target.client_kwargs.get("verify")
    if verify is None:
        verify = os.environ.get("AWS_CA_BUNDLE") or None
    if isinstance(verify, str):
        if verify not in _CAFILES:
            _CAFILES[verify] = ssl.create_default_context(cafile=verify)
        return _CAFILES[verify]
    return tls_context(verify)


async def s3_get(target: Any, path: str, signed: SignedGets) -> DirectGet | None:
    """Return a direct GET of S3 object ``path`` for s3fs ``target``, or ``None``.

    ``None`` means: read it with s3fs. The URL is presigned by the target's
    own client and kept in ``signed`` (one per target) for reuse.
    """
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover (s3fs is optional)
        return None
    if not isinstance(target, S3FileSystem) or not _eligible(target):
        return None
    bucket, key, version_id = target.split_path(path)
    cache_key = (bucket, key, version_id)
    now = time.monotonic()
    hit = signed.get(cache_key)
    if hit is not None and hit[0] > now:
        return hit[1]
    await target.set_session()
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        params["VersionId"] = version_id
    url = await target.s3.generate_presigned_url(
        "get_object", Params=params, ExpiresIn=SIGNED_FOR
    )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    tls = _tls(target) if parts.scheme == "https" else None
    if parts.scheme == "https" and tls is None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target_path = parts.path + (f"?{parts.query}" if parts.query else "")
    get = DirectGet(
        Endpoint(parts.hostname, port, tls),
        target_path or "/",
        (("Host", parts.netloc), ("Accept", "*/*")),
        path,
    )
    if len(signed) > 4096:
        signed.clear()
    signed[cache_key] = (now + REUSED_FOR, get)
    return get
