"""A real Asterisk for the tests and ``bench.asterisk``: started in a temporary run directory on
free ports, with the product's dialplan installed by ``agi_scripts/install.sh`` — the command
docs/asterisk.md gives an admin — and the product's FastAGI server, ACD timers and Redis.

Which Asterisk: ``ASTERISK_HOME`` (a tree with ``bin/asterisk-lab``, like ../shared/asterisk),
else ``../shared/asterisk`` beside the checkout. :func:`locate` says why there is none.

What the PBX did is read from Asterisk itself: AMI events (the lab's own manager user with
``read=all``: VarSet, AGIExecStart, BridgeEnter, ConfbridgeJoin, MusicOnHoldStart, Hangup, …),
CLI output and channel variables — never from the product's logs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ivr.asterisk.ami import AMI

ROOT = Path(__file__).resolve().parent.parent
AMI_USER, AMI_SECRET = "lab", "lab-secret"
PRODUCT_AMI_SECRET = "hotline-lab-secret"


def locate() -> tuple[Path | None, str]:
    """(launcher, '') or (None, why not)."""
    home = os.environ.get("ASTERISK_HOME")
    candidates = [Path(home)] if home else [ROOT.parent / "shared" / "asterisk"]
    for tree in candidates:
        launcher = tree / "bin" / "asterisk-lab"
        if launcher.is_file() and os.access(launcher, os.X_OK):
            if not Path("/usr/share/asterisk/sounds/en_US_f_Allison").is_dir():
                return None, ("no Asterisk core sounds (apt-get install asterisk-core-sounds-en-gsm; "
                              "scripts/setup.sh does it)")
            return launcher, ""
    where = home or str(candidates[0])
    return None, f"no real Asterisk at {where} (set ASTERISK_HOME to a tree with bin/asterisk-lab)"


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


LAB_MANAGER = """[general]
enabled = yes
port = {ami_port}
bindaddr = 127.0.0.1
timestampevents = yes
; the lab's own user: the tests read every event Asterisk sends
[{user}]
secret = {secret}
read = all
write = all
"""

LAB_PJSIP = """[lab-udp]
type = transport
protocol = udp
bind = 127.0.0.1:{sip_port}

[global]
type = global
endpoint_identifier_order = username,ip

; the carrier's trunk: sipp sends INVITEs as user "carrier" with the dialed number in the request URI
[carrier]
type = endpoint
context = hotline-in
disallow = all
allow = ulaw,alaw
direct_media = no
rtp_symmetric = yes
identify_by = username

; agents' phones over PJSIP: agent7001's phone is whatever answers SIP on phone_port (a sipp
; UAS in the tests); agent7002 has never registered (no contact: its device is UNAVAILABLE)
[agent7001]
type = aor
contact = sip:agent7001@127.0.0.1:{phone_port}

[agent7001]
type = endpoint
context = lab-agent
aors = agent7001
disallow = all
allow = ulaw,alaw
direct_media = no
rtp_symmetric = yes

[agent7002]
type = aor
max_contacts = 1

[agent7002]
type = endpoint
context = lab-agent
aors = agent7002
disallow = all
allow = ulaw,alaw
direct_media = no
"""

# agents' phones and the PSTN are simulated by Local channels in these contexts; the tests and
# the benchmark steer them through AstDB (lab/<name>): answer | noanswer | busy, talk seconds
LAB_DIALPLAN = """
[lab-agent]               ; Local/<agent>@lab-agent/n: a simulated agent's phone
exten => _X.,1,Set(LAB_MODE=${{DB(lab/${{EXTEN}})}})
 same => n,GotoIf($["${{LAB_MODE}}" = "noanswer"]?noanswer)
 same => n,GotoIf($["${{LAB_MODE}}" = "busy"]?busy)
 same => n,Wait(0.3)
 same => n,Answer()
 same => n,Set(LAB_TALK=${{DB(lab-talk/${{EXTEN}})}})
 same => n,Wait(${{IF($["${{LAB_TALK}}" = ""]?3600:${{LAB_TALK}})}})
 same => n,Hangup()
 same => n(noanswer),Wait(3600)
 same => n(busy),Busy(5)

[lab-pstn]                ; Local/<number>@lab-pstn: the carrier's network (110, sub-centers, citizens)
exten => _X.,1,Set(LAB_MODE=${{DB(lab/pstn)}})   ; down: the whole network; lab/pstn-<number>: one number
 same => n,GotoIf($["${{LAB_MODE}}" = "down" | "${{DB(lab/pstn-${{EXTEN}})}}" = "down"]?down)
 same => n,Wait(0.2)
 same => n,Answer()
 same => n,Wait(3600)
 same => n(down),Congestion(5)

[lab-caller]              ; the citizen's side of an originated call: stays on the line, silent
exten => s,1,Answer()
 same => n(loop),Playback(silence/10)
 same => n,Goto(loop)
"""

GLOBALS_OVERRIDES = {
    # the simulated carrier network: numbers and sip: sub-centers as Local channels
    "HOTLINE_TRUNK_PREFIX": "Local/",
    "HOTLINE_TRUNK_SUFFIX": "@lab-pstn",
    "HOTLINE_SIP_PREFIX": "Local/",
    "HOTLINE_DUTY_DIAL": "Local/9999@lab-agent/n",
    "HOTLINE_EMERGENCY_RING_S": "10",
}


class AsteriskLab:
    def __init__(self, launcher: Path, base: str | None = None):
        self.launcher = Path(launcher)
        self.run = Path(tempfile.mkdtemp(prefix="ast", dir=base or "/tmp"))  # short: a socket path lives here
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.ami_port = free_port()
        self.phone_port = free_port(socket.SOCK_DGRAM)  # where agent7001's phone answers
        self.proc: subprocess.Popen | None = None
        self.ami: AMI | None = None

    # -- Asterisk -------------------------------------------------------------------------
    def start(self, pjsip_extra: str = "", dialplan_extra: str = "") -> "AsteriskLab":
        run = self.run
        (run / "manager.conf").write_text(LAB_MANAGER.format(ami_port=self.ami_port, user=AMI_USER,
                                                             secret=AMI_SECRET))
        (run / "pjsip.conf").write_text(LAB_PJSIP.format(sip_port=self.sip_port, phone_port=self.phone_port) + pjsip_extra)
        (run / "extensions.conf").write_text("[general]\nstatic=yes\nwriteprotect=yes\n"
                                             + LAB_DIALPLAN.format() + dialplan_extra)
        (run / "cdr.conf").write_text("[general]\nenable=no\n")
        (run / "data" / "moh").mkdir(parents=True, exist_ok=True)  # a real folder: hotline's music goes here
        (run / "logger.conf").write_text("[general]\n[logfiles]\nmessages.log => notice,warning,error,verbose(3)\n")
        self.console = open(run / "console.out", "wb")
        self.proc = subprocess.Popen([str(self.launcher), str(run), "-f", "-n"], stdout=self.console,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: self._booted(), 30, 0.2, "Asterisk to boot")
        self.ami = AMI.connect("127.0.0.1", self.ami_port, AMI_USER, AMI_SECRET, keep_events=True)
        return self

    def _booted(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"Asterisk exited ({self.proc.returncode}): see {self.run}/console.out")
        try:
            return "fully booted" in self.rx("core waitfullybooted", timeout=5)
        except subprocess.SubprocessError:
            return False

    def rx(self, command: str, timeout: float = 15) -> str:
        out = subprocess.run([str(self.launcher), str(self.run), "-rx", command], capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise subprocess.SubprocessError(out.stderr or out.stdout)
        return out.stdout

    def install(self, agi_url: str, python: str = sys.executable, env: dict | None = None,
                globals_overrides: dict | None = None, queue_members=("Local/9001@lab-agent/n",)) -> str:
        """``agi_scripts/install.sh`` as docs/asterisk.md gives it, then the admin's edits of
        hotline/globals.conf and hotline/queues.conf, then ``dialplan reload``."""
        run = self.run
        environ = dict(os.environ, PYTHON=python, ASTERISK_RX=f"{self.launcher} {run} -rx", **(env or {}))
        out = subprocess.run([str(ROOT / "agi_scripts" / "install.sh"), "--etc", str(run),
                              "--sounds", str(run / "data" / "sounds"), "--moh", str(run / "data" / "moh"),
                              "--agi", agi_url, "--ami-secret", PRODUCT_AMI_SECRET],
                             env=environ, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"install.sh failed ({out.returncode}): {out.stderr[-2000:]}")
        self.edit_globals({**GLOBALS_OVERRIDES, **(globals_overrides or {})})
        queues = (run / "hotline" / "queues.conf").read_text()
        queues = "\n".join(line for line in queues.splitlines() if not line.startswith("member =>"))
        queues += "\n" + "".join(f"member => {m}\n" for m in queue_members)
        (run / "hotline" / "queues.conf").write_text(queues)
        self.rx("module reload app_queue.so")
        return out.stderr

    def edit_globals(self, values: dict) -> None:
        path = self.run / "hotline" / "globals.conf"
        lines = path.read_text().splitlines()
        for name, value in values.items():
            for i, line in enumerate(lines):
                if line.startswith(f"{name}="):
                    lines[i] = f"{name}={value}"
                    break
            else:
                raise KeyError(f"{name} is not in globals.conf")
        path.write_text("\n".join(lines) + "\n")
        self.rx("dialplan reload")

    def stop(self) -> None:
        if self.ami is not None:
            self.ami.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.rx("core stop now", timeout=10)
                self.proc.wait(10)
            except (subprocess.SubprocessError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "console", None):
            self.console.close()
        if os.environ.get("HOTLINE_KEEP_LAB") != "1":
            shutil.rmtree(self.run, ignore_errors=True)

    # -- calls ----------------------------------------------------------------------------
    def originate_local(self, number: str, *, caller: str = "13800138000", context: str = "hotline-in",
                        dnid: str | None = None, variables: dict | None = None) -> str:
        """A citizen calls ``number`` over a Local channel (no DNID unless ``dnid``); returns the
        citizen's side (``Local/…;1``), which stays on the line until hung up."""
        variables = dict(variables or {})
        if dnid is not None:
            variables["CALLERID(dnid)"] = dnid
        fields = {"Channel": f"Local/{number}@{context}", "Context": "lab-caller", "Exten": "s",
                  "Priority": 1, "CallerID": f'"citizen" <{caller}>', "Async": "true", "Timeout": 30000,
                  "ChannelId": f"cit-{time.monotonic_ns()}"}
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        self.ami.action("Originate", **fields)
        return fields["ChannelId"]


class Product:
    """The product's Asterisk side: FastAGI server (and ACD timers) on a private Redis and SQLite."""

    def __init__(self, workdir: Path, rules_path: Path, redis_url: str, env: dict | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.env = dict(os.environ, REDIS_URL=redis_url, RULES_PATH=str(rules_path),
                        DATABASE_URL=f"sqlite:///{self.workdir / 'tickets.db'}",
                        HOTLINE_RECORDINGS=str(self.workdir / "recordings"), PYTHONPATH=str(ROOT),
                        **(env or {}))
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    @property
    def agi_url(self) -> str:
        return f"agi://127.0.0.1:{self.port}"

    def start_fastagi(self, processes: int = 1) -> None:
        self._spawn("fastagi", [sys.executable, "-m", "agi_scripts.fastagi_server", "--host", "127.0.0.1",
                                "--port", str(self.port), "--processes", str(processes), "--log-level", "WARNING"])
        wait_until(self._listening, 30, 0.1, "the FastAGI server to listen")

    def start_ticker(self) -> None:
        self._spawn("ticker", [sys.executable, "-m", "call_routing.acd", "tick", "--every", "0.5"])

    def start_worker(self) -> None:
        """The rq worker: speech jobs, hand-offs, and callbacks placed as Asterisk call files."""
        self._spawn("worker", [sys.executable, "-m", "intake.worker", "--url", self.env["REDIS_URL"],
                               "--log-level", "WARNING"])

    def _spawn(self, name: str, argv: list) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _listening(self) -> bool:
        if self.procs["fastagi"].poll() is not None:
            raise RuntimeError(f"FastAGI server exited: {(self.workdir / 'fastagi.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self, name: str | None = None) -> None:
        for key in [name] if name else list(self.procs):
            proc = self.procs.pop(key, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        if name is None:
            for log in self._logs:
                log.close()
