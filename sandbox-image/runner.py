"""Maestro sandbox runner: one Python interpreter per container, one JSON line per request/response.

Protocol (over the container's stdin/stdout): after start-up the runner writes {"ready": true}.
Each request is {"id": N, "code": "...", "limit"?: bytes}. While the cell runs, what it prints comes
as lines {"id", "stream": "stdout" | "stderr", "text"}, per stream every LIVE_SECONDS while there is
new output and once more before the response, each with the bytes kept since the previous one (at
most LIVE_FRAME_BYTES a line): only kept bytes, so a stream's texts together are exactly the
response's text of that stream, never more than `limit` bytes. Then the response, one
line {"id", "stdout", "stderr", "exitCode", "error"?, "truncated": {"stdout", "stderr"}, "files",
"skipped", "stopped"}, where "files" lists [{"name", "size"}] and "stopped" counts the background
processes ended with the cell. The bytes of the listed files follow, concatenated in list order, as
lines {"id", "data": base64} of at most CHUNK_BYTES each.

Arguments (each optional, in any order; the worker passes all of them): --limit BYTES (the cap per
stream), --artifact-files N, --artifact-bytes BYTES and --artifact-file-bytes BYTES (what one
execution may hand back: how many files, their bytes together, the bytes of one file).

Files are read here, by the sandbox user, never by the host: a path the code chose is opened one
component at a time without following a link, and only a regular file is read. Whatever the code
does to this process, it can hand back only bytes it could read itself.

Only this module writes to the saved copy of the original stdout: fds 0, 1 and 2 are repointed
before any user code runs, so nothing the code prints (or its subprocesses print) reaches the frame
stream, and nothing it reads from stdin can swallow the next request.
"""
import base64
import builtins
import codecs
import ctypes
import errno
import json
import os
import platform
import queue
import signal
import stat
import sys
import threading
import time
import traceback

OUTPUT_DIR = "/output"
MIB = 1024 * 1024
DEFAULT_LIMIT = 64 * 1024
# Per-execution artifact limits when the worker passes none.
DEFAULT_MAX_FILES = 20
DEFAULT_MAX_TOTAL_BYTES = 25 * MIB
# One file is never more than this, nor more than the execution's total.
MAX_FILE_BYTES = 10 * MIB
# Bounds one scan of the output dir, so a burst of tiny files cannot make every later cell slow.
MAX_SCAN_ENTRIES = 2000
MAX_DEPTH = 8
MAX_SKIPPED_LISTED = 20
MAX_NAME_BYTES = 255
MPL_CACHE_SEED = "/opt/maestro/matplotlib"
# Raw bytes per data line: 1 MiB of base64, well under the host's line limit.
CHUNK_BYTES = 768 * 1024
# How long the processes a cell left behind get to disappear after SIGKILL.
STOP_WAIT_SECONDS = 2.0
# How often a running cell's new output is sent: a watcher sees it within a tenth of a second, and a
# tight print loop costs a few lines a second per stream rather than one per print.
LIVE_SECONDS = 0.05
# Raw bytes of output per live line at most: even escaped (6 characters a byte, at worst) a line
# stays far below the host's line limit, whatever cap the worker sets.
LIVE_FRAME_BYTES = 256 * 1024


class Capture:
    """One cell's pipe for one stream: keeps at most `limit` bytes and counts the rest."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.kept = 0
        self.dropped = 0
        self.read_fd, self.write_fd = os.pipe()
        self.done = threading.Event()
        # Guards `chunks` against the live sender, which takes what was kept so far while this drains.
        self.lock = threading.Lock()
        self.taken = 0
        # Incremental, so a character split across two reads (or two takes) is not mangled.
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def drain(self):
        try:
            while True:
                data = os.read(self.read_fd, 65536)
                if not data:
                    break
                room = self.limit - self.kept
                if room > 0:
                    with self.lock:
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

    def take(self):
        """The bytes kept since the previous take."""
        with self.lock:
            fresh = self.chunks[self.taken :]
            self.taken = len(self.chunks)
        return b"".join(fresh)


class LiveOutput:
    """Sends a running cell's output as the captures keep it, as {"id", "stream", "text"} lines.

    One long-lived thread (a thread per cell is slow under gVisor) wakes every LIVE_SECONDS while a
    cell runs and sends, per stream, what was kept since its previous line; `finish` sends the rest,
    before the cell's response. Only kept bytes are sent and they are decoded as the response decodes
    them, so the texts of a stream together are its response text exactly, never more than the cap:
    once the cap is reached nothing more is sent.
    """

    def __init__(self, send):
        self.send = send
        # Serialises the periodic sends with `finish`, so nothing of a cell is sent after its rest.
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.cell = None
        threading.Thread(target=self._loop, daemon=True).start()

    def start(self, rid, out, err):
        with self.lock:
            self.cell = (rid, (("stdout", out), ("stderr", err)))
        self.running.set()

    def finish(self):
        """Sends what is left once the captures are drained; an incomplete last character becomes U+FFFD, as in the response."""
        self.running.clear()
        with self.lock:
            self._flush(final=True)
            self.cell = None

    def _loop(self):
        while True:
            self.running.wait()
            time.sleep(LIVE_SECONDS)
            with self.lock:
                self._flush(final=False)

    def _flush(self, final):
        if self.cell is None:
            return
        rid, streams = self.cell
        for name, cap in streams:
            data = cap.take()
            texts = [cap.decoder.decode(data[i : i + LIVE_FRAME_BYTES]) for i in range(0, len(data), LIVE_FRAME_BYTES)]
            if final:
                texts.append(cap.decoder.decode(b"", final=True))
            for text in texts:
                if text:
                    self.send({"id": rid, "stream": name, "text": text})


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


def open_beneath(root_fd, rel):
    """Opens `rel` below the directory `root_fd` for reading, following no link at any component.

    Returns (fd, stat) of a regular file, or raises OSError. O_NONBLOCK keeps a FIFO or a device
    from blocking the open; fstat on the opened descriptor (not the path) decides what was opened.
    """
    parts = rel.split("/")
    dir_fd = root_fd
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            if dir_fd != root_fd:
                os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(
            parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd, st


def read_capped(fd, cap):
    """At most cap + 1 bytes of fd: one byte past the cap tells a file that grew over it."""
    chunks, size = [], 0
    while size <= cap:
        data = os.read(fd, min(1 << 20, cap + 1 - size))
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def size_text(n):
    """Bytes as a person would say them: "25 MiB", "512 KiB", "1000 bytes"."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return "%d %s" % (n // size, unit)
    return "%d byte%s" % (n, "" if n == 1 else "s")


class OutputWatcher:
    """Hands back regular files in the output dir that are new or changed since the previous cell.

    Each reason for a refusal reads after "not saved:"; refusals for the execution's quota start
    with "quota".
    """

    def __init__(self, root, max_files=DEFAULT_MAX_FILES, max_total=DEFAULT_MAX_TOTAL_BYTES, max_file=MAX_FILE_BYTES):
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.seen = {}
        self.max_files = max_files
        self.max_total = max_total
        self.max_file = min(max_file, max_total)

    def scan(self):
        """Names of new or changed entries, and the ones refused on sight."""
        names, skipped = [], []
        visited = 0
        stack = [("", 0)]
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
                        skipped.append(("", "scan limit of %d entries reached" % MAX_SCAN_ENTRIES))
                        stack.clear()
                        break
                    rel = rel_dir + "/" + entry.name if rel_dir else entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 < MAX_DEPTH and clean_name(rel):
                            stack.append((rel, depth + 1))
                        continue
                    key = (st.st_mtime_ns, st.st_size, st.st_ino)
                    if self.seen.get(rel) == key:
                        continue
                    self.seen[rel] = key
                    shown = rel if clean_name(rel) else ""
                    if stat.S_ISLNK(st.st_mode):
                        skipped.append((shown, "symbolic link"))
                    elif not stat.S_ISREG(st.st_mode):
                        skipped.append((shown, "not a regular file"))
                    elif not shown:
                        skipped.append(("", "file name is not a clean relative path"))
                    else:
                        names.append(shown)
        return names, skipped

    def too_big(self):
        """Why a file over the per-file cap is refused: the execution's quota when that is the cap."""
        if self.max_file >= self.max_total:
            return self.over_total()
        return "larger than the %s one file may be" % size_text(self.max_file)

    def over_total(self):
        return "quota: over the %s this execution may save" % size_text(self.max_total)

    def collect(self):
        """The files to hand back, as (listing, concatenated bytes, skipped)."""
        names, refused = self.scan()
        files, blobs, skipped = [], [], list(refused)
        total = 0
        for name in names:
            if len(files) >= self.max_files:
                skipped.append((name, "quota: more than %d file%s in one execution" % (self.max_files, "" if self.max_files == 1 else "s")))
                continue
            try:
                fd, st = open_beneath(self.root_fd, name)
            except OSError:
                # A link at some component, a swap since the scan, or not readable by this user.
                skipped.append((name, "not a regular file this user can read"))
                continue
            try:
                if st.st_size > self.max_file:
                    skipped.append((name, self.too_big()))
                    continue
                data = read_capped(fd, self.max_file)
            except OSError:
                skipped.append((name, "could not be read"))
                continue
            finally:
                os.close(fd)
            if len(data) > self.max_file:
                skipped.append((name, self.too_big()))
            elif total + len(data) > self.max_total:
                skipped.append((name, self.over_total()))
            else:
                total += len(data)
                files.append({"name": name, "size": len(data)})
                blobs.append(data)
        listed = [{"name": n, "reason": r} for n, r in skipped[:MAX_SKIPPED_LISTED]]
        if len(skipped) > MAX_SKIPPED_LISTED:
            listed.append({"name": "", "reason": "%d more not listed" % (len(skipped) - MAX_SKIPPED_LISTED)})
        return files, b"".join(blobs), listed


def cell_processes(me):
    """Live processes of this sandbox other than init (pid 1) and this runner; zombies do not count."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (1, me):
            continue
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            pids.append(pid)
    return pids


def reap_children():
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def stop_cell_processes():
    """Ends every process the cell started: daemons in new sessions, double forks, SIGTERM-deaf ones.

    kill(-1) reaches every process this user may signal in the sandbox's PID namespace except init
    and the caller; every process here runs as the sandbox user, so that is all of them. Returns how
    many there were.
    """
    me = os.getpid()
    left = cell_processes(me)
    if not left:
        return 0
    count = len(left)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while left and time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        reap_children()
        time.sleep(0.001)
        left = cell_processes(me)
    return count


def exit_code_of(exc):
    if exc.code is None:
        return 0, None
    if isinstance(exc.code, int):
        return exc.code, None
    return 1, str(exc.code)


DRAINERS = {}


def run_cell(code, env, limit, rid, live):
    out = DRAINERS["out"].capture(limit)
    err = DRAINERS["err"].capture(limit)
    live.start(rid, out, err)
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
        # Repointing 1 and 2 closes the last write ends this process holds; once the cell's other
        # processes are gone too, the readers see EOF.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    stopped = stop_cell_processes()
    for key, cap in (("out", out), ("err", err)):
        if not cap.done.wait(2.0):
            # Something outlived the kill and still holds the pipe (it cannot, short of a process
            # stuck in the kernel): leave that drainer to it and give the next cells a fresh one.
            DRAINERS[key] = Drainer()
    live.finish()
    if error is not None and len(error) > limit:
        error = error[: limit // 2] + "\n[... traceback truncated ...]\n" + error[-limit // 2 :]
    return {
        "stdout": out.text(),
        "stderr": err.text(),
        "exitCode": exit_code,
        "error": error,
        "truncated": {"stdout": out.dropped > 0, "stderr": err.dropped > 0},
        "stopped": stopped,
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


ARG_DEFAULTS = {
    "--limit": DEFAULT_LIMIT,
    "--artifact-files": DEFAULT_MAX_FILES,
    "--artifact-bytes": DEFAULT_MAX_TOTAL_BYTES,
    "--artifact-file-bytes": MAX_FILE_BYTES,
}


def parse_args(argv):
    """The options in argv, in any order, each a whole number; one absent or malformed keeps its default."""
    values = dict(ARG_DEFAULTS)
    i = 0
    while i < len(argv):
        name = argv[i]
        if name in values and i + 1 < len(argv):
            try:
                values[name] = int(argv[i + 1])
            except ValueError:
                pass
            i += 2
        else:
            i += 1
    values["--limit"] = max(1, values["--limit"])
    values["--artifact-files"] = max(0, values["--artifact-files"])
    values["--artifact-bytes"] = max(0, values["--artifact-bytes"])
    # Never above the cap of the image, whatever the arguments say.
    values["--artifact-file-bytes"] = max(0, min(values["--artifact-file-bytes"], MAX_FILE_BYTES))
    return values


def main():
    # The capture threads must take the GIL back from the main thread to hand over a cell's output;
    # at the default 5 ms switch interval that wait dominated a short cell's round trip.
    sys.setswitchinterval(0.0005)
    # Before any thread starts, so every thread and child inherits the filter.
    deny_tracing()
    args = parse_args(sys.argv[1:])
    limit_default = args["--limit"]
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

    # Live output is sent from its own thread: a line is written whole, never between another's bytes.
    send_lock = threading.Lock()

    def send(obj):
        line = json.dumps(obj, ensure_ascii=True).encode("ascii") + b"\n"
        with send_lock:
            frames.write(line)
            frames.flush()

    env = {"__name__": "__main__", "__builtins__": builtins}
    watcher = OutputWatcher(OUTPUT_DIR, args["--artifact-files"], args["--artifact-bytes"], args["--artifact-file-bytes"])
    watcher.scan()
    live = LiveOutput(send)
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
        result = run_cell(code, env, limit, rid, live)
        files, data, skipped = watcher.collect()
        result["id"] = rid
        result["files"] = files
        result["skipped"] = skipped
        if result["error"] is None:
            del result["error"]
        send(result)
        for start in range(0, len(data), CHUNK_BYTES):
            send({"id": rid, "data": base64.b64encode(data[start : start + CHUNK_BYTES]).decode("ascii")})


if __name__ == "__main__":
    main()
