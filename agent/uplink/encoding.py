"""How telemetry travels: JSON (the default) or CBOR, each optionally compressed with zstd, and
the MQTT 5 content type that says which. Paid per byte on a cellular link, a sample costs about
120 bytes as JSON; CBOR with zstd takes a batch to a fraction of that (docs/performance.md).

Only telemetry is encoded this way; status, state, events, responses and health stay JSON.
The content type is read back from the payload itself (zstd's magic number, then CBOR's or
JSON's first byte), so a record written before a change of settings is labelled as it is.
"""

from __future__ import annotations

from typing import Any, Literal

Encoding = Literal["json", "cbor"]
Compression = Literal["none", "zstd"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 9  # ~25 µs for a 1 kB batch here; levels above gain a few bytes for far more CPU
CONTENT_TYPES = {
    ("json", "none"): "application/json",
    ("cbor", "none"): "application/cbor",
    ("json", "zstd"): "application/json+zstd",
    ("cbor", "zstd"): "application/cbor+zstd",
}


class TelemetryEncoder:
    """Bodies to bytes, with the configured encoding and compression (imports only what they
    need: cbor2 and zstandard are loaded only when configured)."""

    def __init__(self, encoding: Encoding = "json", compression: Compression = "none") -> None:
        self.encoding = encoding
        self.compression = compression
        self.content_type = CONTENT_TYPES[(encoding, compression)]
        self._compress: Any = None
        if compression == "zstd":
            import zstandard

            self._compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress

    def encode(self, body: dict[str, Any]) -> bytes:
        if self.encoding == "cbor":
            import cbor2

            raw = cbor2.dumps(body)
        else:
            import json

            raw = json.dumps(body, separators=(",", ":")).encode()
        return raw if self._compress is None else bytes(self._compress(raw))


def content_type(payload: bytes) -> str:
    """The content type of a telemetry payload, from its bytes."""
    compressed = payload[:4] == ZSTD_MAGIC
    if compressed:  # one byte of the content tells; no need to decompress it all
        import zstandard

        inner = zstandard.ZstdDecompressor().stream_reader(payload).read(1)
    else:
        inner = payload[:1]
    encoding = "json" if inner == b"{" else "cbor"
    return CONTENT_TYPES[(encoding, "zstd" if compressed else "none")]


def decompress(payload: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdDecompressor().decompress(payload))


def decode(payload: bytes) -> Any:
    """Any telemetry payload back to its body (what a Python back end does)."""
    if payload[:4] == ZSTD_MAGIC:
        payload = decompress(payload)
    if payload[:1] == b"{":
        import json

        return json.loads(payload)
    import cbor2

    return cbor2.loads(payload)
