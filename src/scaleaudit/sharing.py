"""Runs sharing one GPU (``resources.runs_per_gpu``): under CUDA MPS where the node has it, else time-sliced.

The runs of one booking share its GPU: on Slurm the runs of one sbatch job (group ``gpu_share<n>``; the booking is
SLURM_JOB_ID), locally the runs that hold slots of one GPU at the same time (the booking is that GPU and the time its
first run claimed it). The first member of a booking starts an MPS control daemon for it, with its pipe and log folders
under a temporary folder named by the booking; the last member to leave stops it (``echo quit |
nvidia-cuda-mps-control``). Members count themselves by file locks: each holds a lock on its own member file while it
runs, so a member killed without leaving (SIGKILL, out of memory) stops counting when the kernel drops its lock.

MPS lets the kernels of the members run at once; time-slicing (no MPS binary, or a daemon that did not start) gives
each process the whole GPU in turn. A process joins when it claims its GPU, before CUDA starts (a CUDA client finds
the daemon through CUDA_MPS_PIPE_DIRECTORY when it initialises), and leaves when it ends.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

MPS_CONTROL = "nvidia-cuda-mps-control"
EXCLUSIVE, TIME_SLICING, MPS = "exclusive", "time-slicing", "mps"
SHARED = (TIME_SLICING, MPS)
BOOKING_FILE = "booking"  # in a booking's state folder: the booking id and its sharing mode, while members run


@dataclass
class Share:
    """How this process uses its device: the runs on its GPU, the sharing mode, the booking, when it claimed the GPU
    (wall-clock seconds; None on the CPU)."""

    runs_per_gpu: int = 1
    mode: str = EXCLUSIVE
    booking: str = ""
    since: float | None = None
    state: Path | None = None  # the booking's state folder (shared runs only)
    member: IO | None = field(default=None, repr=False)  # this member's locked file, until it leaves


_current = Share()  # this process's share, once it has claimed its device


def current() -> Share:
    """The share of the device this process claimed (exclusive and without a GPU before it claims one)."""
    return _current


def booking_id(gpu: str | None) -> str:
    """A new booking's id: SLURM_JOB_ID on Slurm, else the host, the GPU (the node's name for it) and the claim time;
    ``gpu``: the GPU this job claimed among several visible, None when it sees one."""
    on = f"-gpu{gpu}" if gpu is not None else ""
    if os.environ.get("SLURM_JOB_ID"):
        return os.environ["SLURM_JOB_ID"] + on
    return f"{socket.gethostname()}{on or '-gpu0'}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


def mps_env(booking: str, root: Path) -> dict[str, str]:
    """The MPS pipe and log folders of a booking, as the daemon and its clients read them."""
    folder = root / f"scaleaudit-mps-{booking}"
    return {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}


def join(runs_per_gpu: int, gpu: str | None = None, root: Path | None = None, log=print) -> Share:
    """Join the booking of the GPU this process claimed (``gpu`` as in ``booking_id``), starting its MPS daemon when
    first; the share is this process's (``current``) and leaves when the process ends. Alone on its GPU: exclusive."""
    global _current
    now = time.time()
    if runs_per_gpu <= 1:
        _current = Share(since=now, booking=booking_id(gpu))
        return _current
    root = Path(root or tempfile.gettempdir())
    slot = f"slurm{os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else f"uid{os.getuid()}"
    state = root / f"scaleaudit-share-{slot}-gpu{gpu or 0}"
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state):
        booking, mode = _booking(state, gpu, root, log)
        member = open(state / f"member.{os.getpid()}.{time.monotonic_ns()}", "w")
        fcntl.flock(member, fcntl.LOCK_EX)
    if mode == MPS:
        os.environ.update(mps_env(booking, root))
    _current = Share(runs_per_gpu, mode, booking, now, state, member)
    atexit.register(leave, _current, root)
    return _current


def leave(share: Share, root: Path | None = None) -> None:
    """This member is done with the GPU: the last member of an MPS booking stops its daemon."""
    if share.member is None or share.member.closed:
        return
    with _locked(share.state):
        Path(share.member.name).unlink(missing_ok=True)
        share.member.close()
        if not _members(share.state):
            (share.state / BOOKING_FILE).unlink(missing_ok=True)
            if share.mode == MPS:
                _quit(share.booking, Path(root or tempfile.gettempdir()))


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    """The booking's state, one member at a time."""
    with open(state / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _members(state: Path) -> int:
    """Members still running: those whose file is locked; a file left by a killed member is removed."""
    alive = 0
    for path in state.glob("member.*"):
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive += 1
                continue
        path.unlink(missing_ok=True)
    return alive


def _booking(state: Path, gpu: str | None, root: Path, log) -> tuple[str, str]:
    """The running booking's (id, mode); the first member opens a new one, under MPS when the daemon starts. A booking
    whose members were all killed is closed first (its daemon stopped). MPS only where the job sees one GPU (Slurm's
    booking, a one-GPU node): an MPS client numbers the daemon's GPUs, not the node's that the slot claim used."""
    record = state / BOOKING_FILE
    if record.exists():
        booking, mode = record.read_text().split()
        if _members(state):
            return booking, mode
        if mode == MPS:
            _quit(booking, root)
    booking = booking_id(gpu)
    mode = MPS if gpu is None and _start(booking, root, log) else TIME_SLICING
    record.write_text(f"{booking} {mode}\n")
    return booking, mode


def _start(booking: str, root: Path, log) -> bool:
    """Start the booking's MPS daemon; False (time-slicing) without the binary or when it does not start."""
    if shutil.which(MPS_CONTROL) is None:
        return False
    env = mps_env(booking, root)
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([MPS_CONTROL, "-d"], env=os.environ | env, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"MPS daemon did not start ({(done.stderr or done.stdout).strip()}); the GPU is time-sliced")
        return False
    return True


def _quit(booking: str, root: Path) -> None:
    """Stop the booking's MPS daemon."""
    done = subprocess.run(
        [MPS_CONTROL], input="quit\n", env=os.environ | mps_env(booking, root), capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"could not stop the MPS daemon of booking {booking}: {done.stderr.strip()}", file=sys.stderr)
