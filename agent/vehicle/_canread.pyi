"""Types of agent/vehicle/_canread.c (the optional C reader; see agent/vehicle/sockread.py)."""

def read_frames(
    fd: int, limit: int, /
) -> tuple[list[tuple[int, bytes, float]], bool, int, int, int]:
    """(frames, drained, drops or -1, datagrams too short to be a frame, errno or 0)."""
