"""lib/process.py: how a run's process starts and ends (common.py re-exports it).

Errors as one line (die); Ctrl-C, SIGTERM and a disk that refuses a write end a run with one line
(run); a child process (building a missing input stage) that Ctrl-C, SIGTERM and the death of its
parent also end (run_child); and the allocator setting that keeps a CPU step fast.
"""
import ctypes, errno, functools, os, signal, subprocess, sys

if sys.platform.startswith("linux"):
    # glibc hands every large freed block back to the OS, and the next step page-faults it back
    # in: a third of a tiny model's CPU training step. Keep freed memory in the process instead.
    # Measured: 248 → 163 ms/step. The codes are glibc's <malloc.h> constants.
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # blocks up to 1 GiB from the heap, not mmap
    _libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)  # give memory back to the OS only past 2 GiB free
    _libc.mallopt(M_TOP_PAD, 1 << 28)  # grow the heap 256 MiB at a time


def die(msg):
    """End the run with one line saying what happened and what to do (no traceback)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: children first, one line


NO_ROOM = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some of your disk quota",
           errno.EROFS: "give an --out on a writable disk", errno.EACCES: "make it writable",
           errno.EPERM: "make it writable"}  # what the disk refused, and what to do about it


def run(main):
    """Run a script's main(); Ctrl-C or SIGTERM ends it with one line, after the child runs it
    started (checkpoints are renamed in atomically, so none is half-written); so does a disk that
    refuses a write (full, read-only, not ours)."""
    signal.signal(signal.SIGTERM, _terminated)
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot print "≈" gets "?"
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        main()
    except KeyboardInterrupt:
        die("interrupted; finished checkpoints are intact, the unfinished one was never written")
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        die(f"{e.filename or 'a file'}: {e.strerror}; {NO_ROOM[e.errno]} and run again"
            " (finished stages are intact: a stage is replaced only when its run finishes)")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies


def die_with(parent):
    """In a child, before it runs: SIGTERM it when `parent` dies, even by SIGKILL (Linux)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def run_child(cmd, **kwargs):
    """subprocess.run that ends the child when this process is interrupted or terminated, or
    killed outright (SIGKILL: the kernel sends the child SIGTERM). Returns the exit code."""
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = functools.partial(die_with, os.getpid())
    child = subprocess.Popen(cmd, **kwargs)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise
