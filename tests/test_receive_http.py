"""The direct receive client over real HTTP(S) origins on loopback.

Bodies land in the chunks' own buffers (:mod:`cachefs.receive`); these tests
read through :class:`cachefs.fetch.Fetcher` and the filesystem against the
project's :class:`~cachefs.testing.HTTPOrigin`, an aiohttp origin that
redirects, and a TLS origin with a self-signed certificate made here.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import mmap
import random
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from aiohttp import web
from fsspec.implementations.http import HTTPFileSystem

from cachefs import CacheFileSystem
from cachefs.fetch import Fetcher
from cachefs.testing import HTTPOrigin

KiB, MiB = 2**10, 2**20
PIECE = 256 * KiB
DATA = random.Random(7).randbytes(3 * MiB + 12345)


@pytest.fixture
def origin() -> Iterator[HTTPOrigin]:
    with HTTPOrigin({"d/a.bin": DATA, "d/b.bin": DATA[::-1]}) as server:
        yield server


def http(**options: Any) -> HTTPFileSystem:
    return fsspec.filesystem("http", skip_instance_cache=True, **options)  # type: ignore[no-any-return]


async def collect(
    fetcher: Fetcher, url: str, start: int, stop: int, piece: int = PIECE
) -> tuple[bytes, list[tuple[int, memoryview]]]:
    got: list[tuple[int, memoryview]] = []
    await fetcher.stream(
        url, start, stop, piece, on_piece=lambda o, d: got.append((o, memoryview(d)))
    )
    return b"".join(bytes(v) for _, v in got), got


async def close(fetcher: Fetcher) -> None:
    fetcher.close_connections()
    await asyncio.sleep(0)  # let the transports' close callbacks run


async def test_bodies_land_in_piece_buffers_over_one_kept_connection(
    origin: HTTPOrigin,
) -> None:
    fetcher = Fetcher(http(), retries=0, timeout=10)
    url = f"{origin.url}/d/a.bin"
    for start, stop in [(0, len(DATA)), (1000, 700_000), (3 * MiB, 10 * MiB)]:
        body, pieces = await collect(fetcher, url, start, stop)
        assert body == DATA[start:stop]
        offsets = [o for o, _ in pieces]
        assert offsets[0] == start and all(o % PIECE == 0 for o in offsets[1:])
    # A 2 MiB piece is its landing buffer itself (a huge-page map), not a copy.
    body, pieces = await collect(fetcher, url, 0, len(DATA), piece=2 * MiB)
    assert body == DATA and len(pieces) == 2
    assert isinstance(pieces[0][1].obj, mmap.mmap)
    assert fetcher.stats.direct == 4 and fetcher.stats.connections == 1
    pool = fetcher.pool()
    assert pool.open_connections == 1
    await close(fetcher)
    assert pool.closed and pool.open_connections == 0


async def test_a_body_that_came_with_its_head_leaves_the_connection_reusable(
    origin: HTTPOrigin,
) -> None:
    # A small body arrives in the same segment as its head; the head paused
    # reading and nothing resumed it, so the next request on that kept
    # connection waited for a head until the request timeout.
    fetcher = Fetcher(http(), retries=0, timeout=None)
    url = f"{origin.url}/d/a.bin"
    for start, stop in [(0, 24), (100, 142), (7, 8), (0, 300 * KiB)]:
        body, _ = await asyncio.wait_for(collect(fetcher, url, start, stop), 10)
        assert body == DATA[start:stop]
    assert fetcher.stats.direct == 4 and fetcher.stats.connections == 1
    await close(fetcher)


async def test_concurrent_reads_open_one_connection_each_and_reuse_them(
    origin: HTTPOrigin,
) -> None:
    fetcher = Fetcher(http(), retries=0, timeout=10, max_requests=4)
    url = f"{origin.url}/d/b.bin"
    want = DATA[::-1]
    spans = [(i * 100_000, i * 100_000 + 300_000) for i in range(8)]
    for _ in range(2):
        results = await asyncio.gather(*(collect(fetcher, url, a, b) for a, b in spans))
        assert [r[0] for r in results] == [want[a:b] for a, b in spans]
    assert fetcher.stats.direct == 16
    assert fetcher.stats.connections <= 4  # the second round reused them
    await close(fetcher)


async def test_the_target_headers_are_sent() -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        return web.Response(body=b"hello", headers={"ETag": '"1"'})

    with _ServerThread(handler) as base:
        fs = http(headers={"X-Token": "t1", "Authorization": "Bearer b1"})
        fetcher = Fetcher(fs, retries=0, timeout=10)
        body, _ = await collect(fetcher, f"{base}/x", 0, 5)
        await close(fetcher)
    assert body == b"hello" and fetcher.stats.direct == 1
    (headers,) = seen
    assert headers["X-Token"] == "t1" and headers["Authorization"] == "Bearer b1"
    assert headers["Accept-Encoding"] == "identity" and headers["Range"] == "bytes=0-4"


def cache_over(tmp_path: Path, **target_options: Any) -> CacheFileSystem:
    return CacheFileSystem(
        target_protocol="http",
        target_options=target_options,
        cache_dir=str(tmp_path / "cache"),
        chunk_size=PIECE,
        request_timeout=10,
        skip_instance_cache=True,
    )


def test_options_it_cannot_reproduce_go_through_aiohttp(
    origin: HTTPOrigin, tmp_path: Path
) -> None:
    fs = cache_over(tmp_path, client_kwargs={"trust_env": True})
    assert fs.cat_file(f"{origin.url}/d/a.bin", 10, 600_000) == DATA[10:600_000]
    stats = fs.cache_stats()["origin"]
    assert stats["direct"] == 0 and stats["connections"] == 0
    fs.close()


def test_a_redirect_is_followed_by_the_general_client(
    origin: HTTPOrigin, tmp_path: Path
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{origin.url}/d/a.bin")

    with _ServerThread(handler) as base:
        fs = cache_over(tmp_path)
        assert fs.cat_file(f"{base}/moved", 100, 600_000) == DATA[100:600_000]
        stats = fs.cache_stats()["origin"]
        fs.close()
    assert stats["direct"] == 0 and stats["connections"] == 1  # the 302's


@pytest.mark.parametrize("kind", ["503", "reset", "short"])
async def test_faults_are_retried_to_the_exact_bytes(
    origin: HTTPOrigin, kind: str
) -> None:
    origin.fault_kind = kind
    origin.fault_rate = 0.5
    fetcher = Fetcher(http(), retries=12, backoff=0.001, timeout=10)
    url = f"{origin.url}/d/a.bin"
    for start in range(0, len(DATA), 700_000):
        body, _ = await collect(fetcher, url, start, start + 700_000)
        assert body == DATA[start : start + 700_000]
    assert fetcher.stats.retries > 0 and fetcher.stats.direct > 0
    await close(fetcher)


async def test_a_stall_times_out_within_the_request_timeout(origin: HTTPOrigin) -> None:
    origin.fault_kind, origin.fault_rate, origin.stall_seconds = "stall", 1.0, 30
    fetcher = Fetcher(http(), retries=0, timeout=0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError, match=r"a\.bin bytes 0-"):
        await collect(fetcher, f"{origin.url}/d/a.bin", 0, 1000)
    assert loop.time() - began < 10
    assert fetcher.pool().open_connections == 0  # the stalled one was closed
    await close(fetcher)


async def test_missing_files_and_ranges_past_the_end(origin: HTTPOrigin) -> None:
    fetcher = Fetcher(http(), retries=0, timeout=10)
    with pytest.raises(FileNotFoundError):
        await collect(fetcher, f"{origin.url}/d/none.bin", 0, 10)
    body, _ = await collect(fetcher, f"{origin.url}/d/a.bin", len(DATA), len(DATA) + 9)
    assert body == b""
    await close(fetcher)


# -- TLS ----------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _ServerThread:
    """An aiohttp handler on loopback (HTTPS with ``ctx``), in its own thread."""

    def __init__(self, handler: Any, ctx: ssl.SSLContext | None = None) -> None:
        self.handler, self.ctx = handler, ctx
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(10)
        scheme = "https" if self.ctx is not None else "http"
        host = "localhost" if self.ctx is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    (tmp / "a.bin").write_bytes(DATA)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(tmp / request.match_info["tail"])

    with _ServerThread(handler, ctx) as base:
        yield base, cert


async def test_https_with_the_users_context_lands_exact_bytes(
    tls_origin: tuple[str, Path],
) -> None:
    base, cert = tls_origin
    ctx = ssl.create_default_context(cafile=str(cert))
    fetcher = Fetcher(http(ssl=ctx), retries=0, timeout=10)
    body, pieces = await collect(fetcher, f"{base}/a.bin", 5, len(DATA))
    assert body == DATA[5:] and fetcher.stats.direct == 1
    assert isinstance(pieces[-2][1].obj, bytearray | mmap.mmap)
    await close(fetcher)


async def test_https_refuses_an_unknown_certificate(
    tls_origin: tuple[str, Path],
) -> None:
    base, _ = tls_origin
    fetcher = Fetcher(http(), retries=0, timeout=10)
    with pytest.raises(OSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        await collect(fetcher, f"{base}/a.bin", 0, 100)
    insecure = Fetcher(http(ssl=False), retries=0, timeout=10)
    assert (await collect(insecure, f"{base}/a.bin", 0, 100))[0] == DATA[:100]
    await close(fetcher)
    await close(insecure)


def test_https_through_the_filesystem(
    tls_origin: tuple[str, Path], tmp_path: Path
) -> None:
    base, cert = tls_origin
    ctx = ssl.create_default_context(cafile=str(cert))
    fs = CacheFileSystem(
        target_protocol="http",
        target_options={"ssl": ctx},
        cache_dir=str(tmp_path / "cache"),
        chunk_size=PIECE,
        skip_instance_cache=True,
    )
    with fs.open(f"{base}/a.bin", "rb") as f:
        f.seek(PIECE - 10)
        assert f.read(3 * PIECE) == DATA[PIECE - 10 : 4 * PIECE - 10]
    fs.wait_idle()
    assert fs.cache_stats()["origin"]["direct"] >= 1
    fs.close()


async def test_a_paced_read_holds_the_sender_back_between_pieces() -> None:
    # pace (the disk writer's room) is awaited between pieces; meanwhile the
    # connection lands at most one more piece and stops reading, so TCP
    # holds the origin back instead of more pieces landing in new buffers.
    data = random.Random(8).randbytes(64 * MiB)
    with HTTPOrigin({"big.bin": data}) as server:
        fetcher = Fetcher(http(), retries=0, timeout=60)
        got: list[tuple[int, bytes]] = []
        sent_while_held: list[int] = []
        release = asyncio.Event()

        async def pace() -> None:
            if len(got) == 1:  # hold after the first piece
                await asyncio.sleep(1.0)
                sent_while_held.append(server.stats.bytes_sent)
                release.set()

        await fetcher.stream(
            f"{server.url}/big.bin",
            0,
            len(data),
            2 * MiB,
            on_piece=lambda o, d: got.append((o, bytes(d))),
            pace=pace,
        )
        assert release.is_set()
        assert b"".join(d for _, d in got) == data
        # Two pieces landed and the socket buffers' worth: far from 64 MiB.
        assert sent_while_held[0] < 32 * MiB, sent_while_held
        await close(fetcher)
