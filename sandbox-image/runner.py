"""Maestro sandbox runner: one Python interpreter per container, one JSON line per request/response.

Protocol (over the container's stdin/stdout): after start-up the runner writes {"ready": true}.
Each request is {"id": N, "code": "...", "limit"?: bytes}; each response is one line
{"id", "stdout", "stderr", "exitCode", "error"?, "truncated": {"stdout", "stderr"}, "files", "skipped"}.

Only this module writes to the saved copy of the original stdout: fds 0, 1 and 2 are repointed
before any user code runs, so nothing the code prints (or its subprocesses print) reaches the frame
stream, and nothing it reads from stdin can swallow the next request.
"""
import builtins
import ctypes
import errno
import json
import os
import platform
import queue
import stat
import sys
import threading
import traceback

OUTPUT_DIR = "/output"
DEFAULT_LIMIT = 64 * 1024
MAX_FILES = 20
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TOTAL_BYTES = 25 * 1024 * 1024
# Bounds one scan of the output dir, so a burst of tiny files cannot make every later cell slow.
MAX_SCAN_ENTRIES = 2000
MAX_DEPTH = 8
MAX_SKIPPED_LISTED = 20
MAX_NAME_BYTES = 255
MPL_CACHE_SEED = "/opt/maestro/matplotlib"


class Capture:
    """One cell's pipe for one stream: keeps at most `limit` bytes and counts the rest."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.kept = 0
        self.dropped = 0
        self.read_fd, self.write_fd = os.pipe()
        self.done = threading.Event()

    def drain(self):
        try:
            while True:
                data = os.read(self.read_fd, 65536)
                if not data:
                    break
                room = self.limit - self.kept
                if room > 0:
                    self.chunks.append(data[:room])
                    self.kept += min(room, len(data))
                self.dropped += max(0, len(data) - max(room, 0))
        except OSError:
            pass
        finally:
            os.close(self.read_fd)
            self.done.set()

    def text(self):
        return b"".join(self.chunks).decode("utf-8", "replace")


class Drainer:
    """A long-lived thread that drains one Capture after another.

    Starting a thread per cell cost ~1.6 ms under gVisor, most of a short cell's round trip.
    """

    def __init__(self):
        self.queue = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            self.queue.get().drain()

    def capture(self, limit):
        cap = Capture(limit)
        self.queue.put(cap)
        return cap


def clean_name(rel):
    """A name the host may use: relative, `/`-separated, printable, no `.`/`..` parts."""
    if not rel or len(rel.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return False
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return False
        if any(ord(c) < 32 or ord(c) == 127 or c == "\\" for c in part):
            return False
    return True


class OutputWatcher:
    """Reports regular files in the output dir that are new or changed since the previous cell."""

    def __init__(self, root):
        self.root = root
        self.seen = {}

    def scan(self):
        files, skipped = [], []
        skipped_more = 0
        total = 0
        visited = 0
        stack = [("", 0)]

        def skip(name, reason):
            nonlocal skipped_more
            if len(skipped) < MAX_SKIPPED_LISTED:
                skipped.append({"name": name, "reason": reason})
            else:
                skipped_more += 1

        while stack:
            rel_dir, depth = stack.pop()
            try:
                it = os.scandir(os.path.join(self.root, rel_dir) if rel_dir else self.root)
            except OSError:
                continue
            with it:
                for entry in it:
                    visited += 1
                    if visited > MAX_SCAN_ENTRIES:
                        skip("", "scan limit of %d entries reached" % MAX_SCAN_ENTRIES)
                        stack.clear()
                        break
                    rel = rel_dir + "/" + entry.name if rel_dir else entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = (st.st_mtime_ns, st.st_size, st.st_ino)
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 < MAX_DEPTH and clean_name(rel):
                            stack.append((rel, depth + 1))
                        continue
                    if self.seen.get(rel) == key:
                        continue
                    self.seen[rel] = key
                    shown = rel if clean_name(rel) else ""
                    if stat.S_ISLNK(st.st_mode):
                        skip(shown, "symbolic link")
                    elif not stat.S_ISREG(st.st_mode):
                        skip(shown, "not a regular file")
                    elif not shown:
                        skip("", "file name is not a clean relative path")
                    elif len(files) >= MAX_FILES:
                        skip(shown, "more than %d files" % MAX_FILES)
                    elif st.st_size > MAX_FILE_BYTES:
                        skip(shown, "larger than %d bytes" % MAX_FILE_BYTES)
                    elif total + st.st_size > MAX_TOTAL_BYTES:
                        skip(shown, "total size over %d bytes" % MAX_TOTAL_BYTES)
                    else:
                        total += st.st_size
                        files.append({"name": rel, "size": st.st_size})
        if skipped_more:
            skipped.append({"name": "", "reason": "%d more not listed" % skipped_more})
        return files, skipped


def exit_code_of(exc):
    if exc.code is None:
        return 0, None
    if isinstance(exc.code, int):
        return exc.code, None
    return 1, str(exc.code)


DRAINERS = {}


def run_cell(code, env, limit):
    out = DRAINERS["out"].capture(limit)
    err = DRAINERS["err"].capture(limit)
    saved = (sys.stdout, sys.stderr)
    os.dup2(out.write_fd, 1)
    os.dup2(err.write_fd, 2)
    os.close(out.write_fd)
    os.close(err.write_fd)
    exit_code, error = 0, None
    try:
        exec(compile(code, "<cell>", "exec"), env)
    except SystemExit as exc:
        exit_code, message = exit_code_of(exc)
        if message:
            sys.stderr.write(message + "\n")
    except BaseException as exc:
        exit_code = 1
        # Drop this module's own frame so the traceback starts at the cell.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        error = "".join(traceback.format_exception(type(exc), exc, tb))
    finally:
        for stream in (sys.stdout, sys.stderr, *saved):
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = saved
        # Repointing 1 and 2 closes the last write ends this process holds; the readers then see EOF
        # unless a background child still holds a copy, which is why the joins have a timeout.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    for key, cap in (("out", out), ("err", err)):
        if not cap.done.wait(2.0):
            # A background child still holds the pipe open: leave that drainer to it (it keeps
            # dropping what it reads) and give the next cells a fresh one.
            DRAINERS[key] = Drainer()
    if error is not None and len(error) > limit:
        error = error[: limit // 2] + "\n[... traceback truncated ...]\n" + error[-limit // 2 :]
    return {
        "stdout": out.text(),
        "stderr": err.text(),
        "exitCode": exit_code,
        "error": error,
        "truncated": {"stdout": out.dropped > 0, "stderr": err.dropped > 0},
    }


def seed_matplotlib_cache():
    """Copies the font cache built into the image, so the first plot does not rebuild it."""
    target = os.environ.get("MPLCONFIGDIR")
    if not target or not os.path.isdir(MPL_CACHE_SEED):
        return
    try:
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(MPL_CACHE_SEED):
            src = os.path.join(MPL_CACHE_SEED, name)
            if os.path.isfile(src) and not os.path.islink(src):
                with open(src, "rb") as fin, open(os.path.join(target, name), "wb") as fout:
                    fout.write(fin.read())
    except OSError:
        pass


# Without Yama (the host kernel here has none) runc lets code ptrace any process of its own uid,
# PID 1 (docker-init) included: an attach leaves init stopped, so it no longer reaps and the container
# no longer ends by itself. gVisor refuses a non-descendant already. So the runner denies ptrace and
# process_vm_readv/writev to itself and everything the code starts, on top of Docker's seccomp
# profile (filters stack and cannot be removed; no-new-privileges lets an unprivileged process add one).
# Per machine: (AUDIT_ARCH, numbers of ptrace, process_vm_readv, process_vm_writev).
NO_TRACE_SYSCALLS = {
    "x86_64": (0xC000003E, (101, 310, 311)),
    "aarch64": (0xC00000B7, (117, 270, 271)),
}


def deny_tracing():
    arch = NO_TRACE_SYSCALLS.get(platform.machine())
    if arch is None:
        sys.stderr.write("runner: no tracing filter for %s\n" % platform.machine())
        return
    audit_arch, numbers = arch

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    ld_w_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    n = len(numbers)
    prog = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, audit_arch),
        (ret, 0, 0, deny),  # a foreign ABI (int 0x80) would dodge the numbers below
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, n + 1, 0, 0x40000000),  # x32 ABI numbers, likewise
    ]
    prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_seccomp, seccomp_mode_filter = 22, 2
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        # Fail closed: a sandbox that was meant to have the filter must not serve without it.
        raise OSError(ctypes.get_errno(), "could not install the tracing filter")


def main():
    # The capture threads must take the GIL back from the main thread to hand over a cell's output;
    # at the default 5 ms switch interval that wait dominated a short cell's round trip.
    sys.setswitchinterval(0.0005)
    # Before any thread starts, so every thread and child inherits the filter.
    deny_tracing()
    limit_default = DEFAULT_LIMIT
    if len(sys.argv) > 2 and sys.argv[1] == "--limit":
        limit_default = max(1, int(sys.argv[2]))
    # os.dup makes non-inheritable copies, so subprocesses of the cell never see the frame streams.
    requests = os.fdopen(os.dup(0), "rb")
    frames = os.fdopen(os.dup(1), "wb")
    null_in = os.open(os.devnull, os.O_RDONLY)
    null_out = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_in, 0)
    os.dup2(null_out, 1)
    os.dup2(null_out, 2)
    os.close(null_in)
    os.close(null_out)
    seed_matplotlib_cache()
    DRAINERS["out"] = Drainer()
    DRAINERS["err"] = Drainer()

    def send(obj):
        frames.write(json.dumps(obj, ensure_ascii=True).encode("ascii") + b"\n")
        frames.flush()

    env = {"__name__": "__main__", "__builtins__": builtins}
    watcher = OutputWatcher(OUTPUT_DIR)
    watcher.scan()
    send({"ready": True})
    while True:
        line = requests.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            rid = req["id"]
            code = req["code"]
            limit = int(req.get("limit", limit_default))
            if not isinstance(code, str) or limit < 1:
                raise ValueError("bad request")
        except (ValueError, KeyError, TypeError) as exc:
            send({"id": None, "protocolError": str(exc)})
            continue
        result = run_cell(code, env, limit)
        files, skipped = watcher.scan()
        result["id"] = rid
        result["files"] = files
        result["skipped"] = skipped
        if result["error"] is None:
            del result["error"]
        send(result)


if __name__ == "__main__":
    main()
